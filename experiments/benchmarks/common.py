"""Shared pieces of the benchmark: environment, data, LoRA settings, FLOP formula, step timing."""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# -- model FLOPs -------------------------------------------------------------------------------


@dataclass
class FlopModel:
    """Useful training FLOPs of a LoRA step (frozen base), the formula stated in RESULTS.md:

    per row of T tokens with R response tokens:
        (4 * N_lin + 6 * N_lora) * T      frozen linears: forward 2NT + input-gradient 2NT;
                                           LoRA: forward 2, input-grad 2, weight-grad 2 per param
      + 6 * n_layers * d_attn * T^2        causal attention QK^T and AV (forward 2*T^2*d, backward 2x)
      + 4 * vocab * d_model * R            output head at response positions (forward + input-grad)
    Embedding lookups are free; norms, activations and the optimizer are not counted.
    """

    n_linear: int
    n_lora: int
    n_layers: int
    d_attn: int
    d_model: int
    vocab: int

    @classmethod
    def of(cls, peft_model: Any) -> FlopModel:
        import torch

        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        head = base.get_output_embeddings()
        n_linear = 0
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head and "lora_" not in name:
                n_linear += module.weight.numel()
        n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        cfg = base.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            n_linear=n_linear,
            n_lora=n_lora,
            n_layers=cfg.num_hidden_layers,
            d_attn=cfg.num_attention_heads * head_dim,
            d_model=cfg.hidden_size,
            vocab=cfg.vocab_size,
        )

    def step(self, lengths: list[int], response_tokens: int) -> float:
        t = sum(lengths)
        t2 = sum(x * x for x in lengths)
        return (
            (4 * self.n_linear + 6 * self.n_lora) * t
            + 6 * self.n_layers * self.d_attn * t2
            + 4 * self.vocab * self.d_model * response_tokens
        )


# -- timing ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class StepLog:
    """Per optimizer step: end time (wall + CPU), real tokens, response tokens, row lengths."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    response: list[int] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    padded: list[int] = field(default_factory=list)
    start_wall: float = 0.0
    start_cpu: float = 0.0

    def begin(self) -> None:
        self.start_wall, self.start_cpu = time.perf_counter(), cpu_seconds()

    def record_batch(self, lengths: list[int], response: int, padded: int) -> None:
        self.lengths.append(list(lengths))
        self.tokens.append(sum(lengths))
        self.response.append(int(response))
        self.padded.append(int(padded))

    def end_step(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(cpu_seconds())

    def summary(self, warmup: int, flops: FlopModel | None = None) -> dict[str, Any]:
        """Throughput over the steps after ``warmup`` (timed from the end of the last warmup step)."""
        n = min(len(self.wall), len(self.tokens))
        if n <= warmup:
            raise RuntimeError(f"only {n} steps recorded, need more than warmup={warmup}")
        t0 = self.wall[warmup - 1] if warmup else self.start_wall
        c0 = self.cpu[warmup - 1] if warmup else self.start_cpu
        wall = self.wall[n - 1] - t0
        cpu = self.cpu[n - 1] - c0
        tokens = sum(self.tokens[warmup:n])
        response = sum(self.response[warmup:n])
        padded = sum(self.padded[warmup:n])
        out = {
            "steps": n - warmup,
            "warmup_steps": warmup,
            "warmup_wall_s": (self.wall[warmup - 1] - self.start_wall) if warmup else 0.0,
            "rows": sum(len(x) for x in self.lengths[warmup:n]),
            "wall_s": wall,
            "cpu_s": cpu,
            "tokens": tokens,
            "response_tokens": response,
            "padded_tokens": padded,
            "tokens_per_s": tokens / wall,
            "response_tokens_per_s": response / wall,
            "tokens_per_cpu_s": tokens / cpu if cpu else float("nan"),
            "median_step_tokens_per_s": statistics.median(
                tok / (b - a)
                for tok, a, b in zip(
                    self.tokens[warmup:n], [t0, *self.wall[warmup : n - 1]], self.wall[warmup:n]
                )
            ),
            "step_wall_s": [
                round(b - a, 3) for a, b in zip([t0, *self.wall[warmup : n - 1]], self.wall[warmup:n])
            ],
        }
        if flops is not None:
            total = sum(
                flops.step(lens, r) for lens, r in zip(self.lengths[warmup:n], self.response[warmup:n])
            )
            out["model_flops"] = total
            out["flops_per_s"] = total / wall
        return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
