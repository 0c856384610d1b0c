"""Shared pieces of the benchmark: environment, data, LoRA settings, FLOP formula, step timing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steps import FlopModel, StepLog, cpu_seconds  # noqa: F401 - the benchmarks import them from here

REPO = Path(__file__).resolve().parents[2]

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TRANSFORMERS_VERBOSITY": "error",
    "DISABLE_TQDM": "1",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("SSR_DATA_ROOT", "/work/shared/data")


def shipped(*overrides: str) -> Any:
    """The shipped config tree (``conf/``) composed as ``ssr-train`` composes it (schema defaults
    included), with ``overrides``: the benchmark runs what users run."""
    import sys

    sys.path.insert(0, str(REPO / "src"))
    from hydra import compose, initialize_config_dir

    from ssr.cli._hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# The same adapter, learning rate and row length for every contender, read from the shipped
# config: LoRA (conf/peft/lora.yaml), optim.lr (OptimConfig), SQuAD rows (conf/data/squad_v2.yaml).
_SQUAD = shipped("data=squad_v2")
LORA: dict[str, Any] = {k: v for k, v in _SQUAD.peft.items() if not str(k).startswith("_")}
LR = float(_SQUAD.optim.lr)
MAX_LENGTH = int(_SQUAD.data.max_length)


def squad_path() -> Path:
    return Path(os.environ["SSR_DATA_ROOT"]) / "squad_v2" / "dev-v2.0.json"


def bench_records(
    n: int, tokenizer: Any, min_prompt: int = 250, max_prompt: int = 400, seed: int = 0
) -> list:
    """``n`` real SQuAD-2.0 rows (balanced answerable/unanswerable) whose grounded prompt is
    ``min_prompt``..``max_prompt`` tokens long; gold answers as targets (short responses)."""
    from ssr.data.adapters import squad_v2, subsample
    from ssr.data.prompts import PromptConfig, build_messages, render_prompt

    cfg = PromptConfig()
    records = subsample(squad_v2(str(squad_path()), split="train"), balance=True, seed=seed)
    out = []
    for r in records:
        prompt = render_prompt(tokenizer, build_messages(r, cfg))
        if min_prompt <= len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_prompt:
            out.append(r)
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} SQuAD rows have {min_prompt}-{max_prompt} prompt tokens")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
