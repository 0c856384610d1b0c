"""ssr-eval: evaluate a base model or a trained adapter on task metrics + the drift suite.

    ssr-eval                                  # the base model of the config (model=...)
    ssr-eval +adapter=outputs/.../adapter     # a trained LoRA adapter on the base it was trained on
The adapter's base model comes from its run's config (or ``adapter_config.json``), not ``model=``.
Writes ``eval.json`` next to the adapter (or into the run directory for a base model).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, load_records, resolve_precision, to_dict
from ssr.cli.guard import exits_on_config_error, preflight_stage
from ssr.data.prompts import PromptConfig
from ssr.eval.evaluate import evaluate_model
from ssr.eval.grounded import evaluate_grounded
from ssr.eval.items import ITEMS_DIR, ItemSink
from ssr.generation import DecodingConfig
from ssr.models import ModelSpec, adapter_base_spec, load_model

log = logging.getLogger("ssr.eval")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from ssr.cli.train import task_prompt_budget, task_sets

    preflight_stage(cfg, endpoints=False)  # no judge in evaluation
    precision = resolve_precision(cfg).precision
    adapter = cfg.get("adapter")
    spec = adapter_base_spec(adapter, to_dict(cfg.model)) if adapter else ModelSpec(**to_dict(cfg.model))
    if adapter and spec.name_or_path != cfg.model.name_or_path:
        log.info("adapter %s: base model %s (model.name_or_path ignored)", adapter, spec.name_or_path)
    model, tokenizer = load_model(spec)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    data_root = str(Path(cfg.paths.data_root).resolve())
    os.environ["SSR_DATA_ROOT"] = data_root
    prompt = PromptConfig(**to_dict(cfg.prompt))

    out = Path(adapter) if adapter else Path(cfg.paths.output_dir)
    items = ItemSink(out / ITEMS_DIR, "eval")  # per-item results, as in a training run's evaluations
    tasks_cfg = cfg.eval.get("tasks") or {}
    decoding = DecodingConfig(max_new_tokens=int(tasks_cfg.get("max_new_tokens", 64)))
    tasks = {
        name: evaluate_grounded(
            model,
            tokenizer,
            recs,
            prompt,
            decoding,
            max_prompt_tokens=task_prompt_budget(cfg),
            precision=precision,
            items=items,
            items_source=name,
        )[0]
        for name, recs in task_sets(cfg, load_records(cfg.data, "val", cfg.seed)).items()
        if recs
    }
    suite = evaluate_model(
        model,
        tokenizer,
        to_dict(cfg.eval.suite),
        to_dict(cfg.eval.self_drift),
        mixed_precision=precision,
        data_root=data_root,
        items=items,
    )
    result = {
        "model": spec.name_or_path,
        "adapter": adapter,
        "precision": precision,
        "final": {"tasks": tasks},
        "suite": suite,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1, default=str))
    log.info("wrote %s", out / "eval.json")
    for name, scores in tasks.items():
        log.info(
            "%s: unanswerable F1 %.3f, answer recall %.3f",
            name,
            scores["unanswerable_f1"],
            scores["answer_recall"],
        )
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
