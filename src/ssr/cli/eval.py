"""ssr-eval: evaluate a base model or a trained adapter: task metrics + the drift suite + self-drift.

    ssr-eval                                  # the base model of the config (model=...)
    ssr-eval +adapter=outputs/.../adapter     # a trained LoRA adapter on the base it was trained on
The adapter's base model comes from its run's config (or ``adapter_config.json``), not ``model=``.
Writes ``eval.json`` (the schema of :func:`ssr.eval.evaluator.eval_summary`) next to the adapter,
or into the run directory for a base model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, build, load_records, resolve_precision
from ssr.cli.guard import exits_on_config_error, preflight_stage
from ssr.eval.evaluator import eval_summary, write_json
from ssr.eval.items import ITEMS_DIR, ItemSink
from ssr.models.loading import adapter_base_spec, load_model

log = logging.getLogger("ssr.eval")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    preflight_stage(cfg, endpoints=False)  # no judge in evaluation
    precision = resolve_precision(cfg).precision
    adapter = cfg.get("adapter")  # `+adapter=...`: not in the config tree
    spec = instantiate(cfg.model)
    spec = adapter_base_spec(adapter, asdict(spec)) if adapter else spec
    if adapter and spec.name_or_path != cfg.model.name_or_path:
        log.info("adapter %s: base model %s (model.name_or_path ignored)", adapter, spec.name_or_path)
    model, tokenizer = load_model(spec)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ood = {str(name): build(node) for name, node in cfg.data.ood.items()}
    evaluator = build(cfg.eval)(val_records=load_records(cfg.data, "val", cfg.seed), ood=ood)
    out = Path(adapter) if adapter else Path(cfg.paths.output_dir)
    items = ItemSink(out / ITEMS_DIR, "eval")  # per-item results, as in a training run's evaluations
    record = evaluator.evaluate(model, tokenizer, "eval", precision=precision, items=items)
    result = eval_summary([record], model=spec.name_or_path, adapter=adapter, precision=precision)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    log.info("wrote %s", out / "eval.json")
    for name, scores in record.get("tasks", {}).items():
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
