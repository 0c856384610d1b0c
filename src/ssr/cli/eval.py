"""ssr-eval: evaluate a base model or a trained adapter: task metrics + the drift suite + self-drift.

    ssr-eval                                  # the base model of the config (model=...)
    ssr-eval +adapter=outputs/.../adapter     # a trained LoRA adapter on the base it was trained on
    ssr-eval +run=outputs/... eval.final.enabled=true eval.final.tasks={...} ...
                                              # add eval.final measures to a finished run
The adapter's base model comes from its run's config (or ``adapter_config.json``), not ``model=``.
Writes ``eval.json`` (the schema of :func:`ssr.eval.evaluator.eval_summary`) next to the adapter,
or into the run directory for a base model. With ``+run=`` the configured ``eval.final`` parts are
evaluated on the run's base and adapter and merged into its final records
(:mod:`ssr.eval.final_completion`; parts the records hold already must be turned off).
"""

from __future__ import annotations

import logging
import time
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
    if cfg.get("run"):  # `+run=...`: complete a finished run's eval.final records
        return complete_final(cfg, Path(cfg.run))
    precision = resolve_precision(cfg).precision
    adapter = cfg.get("adapter")  # `+adapter=...`: not in the config tree
    name, model, tokenizer = _load_adapter(cfg, adapter)
    evaluator = _evaluator(cfg)
    out = Path(adapter) if adapter else Path(cfg.paths.output_dir)
    items = ItemSink(out / ITEMS_DIR, "eval")  # per-item results, as in a training run's evaluations
    record = evaluator.evaluate(model, tokenizer, "eval", precision=precision, items=items)
    result = eval_summary([record], model=name, adapter=adapter, precision=precision)
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


def _evaluator(cfg: DictConfig) -> Any:
    """``cfg.eval`` built with the run's held-out records: validation rows and ``data.ood`` sets."""
    ood = {str(name): build(node) for name, node in cfg.data.ood.items()}
    return build(cfg.eval)(val_records=load_records(cfg.data, "val", cfg.seed), ood=ood)


def _load_adapter(cfg: DictConfig, adapter: str | None) -> tuple[str, Any, Any]:
    """The config's model, or a trained adapter on the base model it was trained on: its base
    model's name, the model and its tokenizer."""
    spec = instantiate(cfg.model)
    spec = adapter_base_spec(adapter, asdict(spec)) if adapter else spec
    if adapter and spec.name_or_path != cfg.model.name_or_path:
        log.info("adapter %s: base model %s (model.name_or_path ignored)", adapter, spec.name_or_path)
    model, tokenizer = load_model(spec)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return spec.name_or_path, model, tokenizer


def complete_final(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``eval.final``'s parts on the run's base and trained adapter (``<run>/adapter``) and
    merge them into its ``drift.json`` final records and ``eval_items/final{,_base}``."""
    from ssr.eval import final_completion

    drift = final_completion.final_records(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json (+run= needs a LoRA run's adapter/)")
    final = _evaluator(cfg).final
    if final is None:
        raise ValueError("+run= adds eval.final measures: set eval.final.enabled=true and the parts to add")
    planned = final_completion.check_new(drift, final, run_dir)
    precision = final_completion.run_precision(run_dir) or resolve_precision(cfg).precision
    log.info("+run=%s: evaluated at precision %s", run_dir, precision)
    _, model, tokenizer = _load_adapter(cfg, str(adapter))
    base_items, model_items = final_completion.completion_sinks(run_dir)
    started = time.perf_counter()
    base = final.evaluate_base(model, tokenizer, precision=precision, items=base_items)
    record = final.evaluate(model, tokenizer, "final", precision=precision, items=model_items)
    path = final_completion.merge_final(
        run_dir, drift, final, planned, base, record, time.perf_counter() - started, precision
    )
    log.info("added %s to the final records in %s", planned, path)
    for name, scores in record.get("tasks", {}).items():
        log.info(
            "%s: over-refusal %.3f (base %.3f)",
            name,
            scores["over_refusal"],
            base["tasks"][name]["over_refusal"],
        )
    return drift["final"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
