"""Generative drift of trained adapters vs their base: IFEval (the four official metrics), refusals and
their leak, reply length and end of turn, over-refusal on answerable out-of-domain questions.

Every number comes from ssr's own evaluation (:class:`ssr.eval.evaluator.Evaluator` with
``eval.ifeval`` on, the suite and kl_task off), composed from ``conf/experiment/cpu_replication_v2``:
the base (``evaluate_base``: its replies generated once, cached under ``SSR_CACHE/ifeval``) and each
adapter (``evaluate``), items under ``<out>/items/<name>/``, the records under ``<out>/<name>.json``.
A model whose record exists is skipped (rerun after a stop). Then the paired statistics over the
shared prompts (bootstrap 95% CI, exact McNemar / sign-test p) go to ``<out>/results.json``.

    python measure.py --out DIR --adapter sft=RUN/adapter --adapter ssr=RUN/adapter [--limit N]
        [--max-gen-toks 1280] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ssr.eval.items import ItemSink, item_values, paired_values, read_source
from ssr.report.stats import method_difference, paired_change

# (item source, metric) -> scale for the tables (points, tokens or nats)
ITEM_METRICS = {
    ("ifeval", "prompt_level_strict_acc"): 100.0,
    ("ifeval", "prompt_level_loose_acc"): 100.0,
    ("ifeval", "refused"): 100.0,
    ("ifeval", "leak"): 100.0,
    ("ifeval", "n_tokens"): 1.0,
    ("ifeval", "ended"): 100.0,
    ("self_drift", "nll"): 1.0,
    ("self_drift", "stop_prob"): 100.0,
    ("self_drift", "survival"): 100.0,
    ("tasks.ood_nq", "over_refusal"): 100.0,
    ("tasks.ood_quac", "over_refusal"): 100.0,
}


def compose(out: Path, limit: int | None, max_gen_toks: int) -> Any:
    """The experiment's config with the evaluation narrowed to what this script measures."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from ssr.cli._hydra import CONF_DIR

    overrides = [
        "experiment=cpu_replication_v2",
        "eval/suite=none",
        "eval.kl_task.enabled=false",
        "eval.self_drift.limit=null",  # all 48 instructions: end of turn along the base's answers
        "eval.tasks.in_domain=false",  # over-refusal: the out-of-domain sets (NQ open-book, QuAC)
        f"eval.ifeval.limit={'null' if limit is None else limit}",
        f"eval.ifeval.max_gen_toks={max_gen_toks}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def evaluate_all(
    out: Path, adapters: dict[str, str], limit: int | None, max_gen_toks: int, precision: str
) -> dict[str, Any]:
    """The base and each adapter, each skipped when its record is there."""
    from hydra.utils import instantiate
    from peft import PeftModel

    from ssr.cli._hydra import build
    from ssr.models.loading import load_model
    from ssr.runtime.precision import resolve

    cfg = compose(out, limit, max_gen_toks)
    ood = {str(name): build(node) for name, node in cfg.data.ood.items()}
    evaluator = build(cfg.eval)(val_records=[], ood=ood)
    spec = instantiate(cfg.model)
    records = {}
    for name, adapter in {"base": None, **adapters}.items():
        path = out / f"{name}.json"
        if path.is_file():
            records[name] = json.loads(path.read_text())
            continue
        model, tokenizer = load_model(spec)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        items = ItemSink(out / "items", name)
        started = time.perf_counter()
        if adapter:
            record = evaluator.evaluate(model, tokenizer, "final", precision=precision, items=items)
        else:
            record = evaluator.evaluate_base(model, tokenizer, precision=precision, items=items)
        record["seconds"]["wall"] = round(time.perf_counter() - started, 2)
        record["adapter"] = adapter
        record["precision"] = resolve(precision, "cpu").describe()
        path.write_text(json.dumps(record, indent=1, default=str))
        records[name] = record
    return records


def paired_stats(out: Path, names: list[str]) -> dict[str, Any]:
    """Per item metric: each model vs the base, and ssr - sft, on the items both have."""
    stats: dict[str, Any] = {}
    for (source, metric), scale in ITEM_METRICS.items():
        files = {n: out / "items" / n / f"{source}.jsonl" for n in ["base", *names]}
        if not all(f.is_file() for f in files.values()):
            continue
        values = {n: item_values(read_source(f), metric) for n, f in files.items()}
        row: dict[str, Any] = {}
        for name in names:
            ids, base, model = paired_values(values["base"], values[name])
            if ids and metric != "leak":  # the leak is vs the base already
                row[f"{name} - base"] = _scaled(paired_change(base, model), scale)
        if {"sft", "ssr"} <= set(names):
            ids, sft, ssr = paired_values(values["sft"], values["ssr"])
            if ids:
                row["ssr - sft"] = _scaled(method_difference(sft, ssr), scale)
        row["means"] = {n: scale * sum(v.values()) / len(v) for n, v in values.items() if v}
        stats[f"{source}/{metric}"] = row
    return stats


def _scaled(est: Any, scale: float) -> dict[str, Any]:
    return {**est.to_dict(), "mean": scale * est.mean, "lo": scale * est.lo, "hi": scale * est.hi}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH (a run's adapter dir)")
    parser.add_argument("--limit", type=int, default=None, help="prompts (a fixed sample); default all 541")
    parser.add_argument("--max-gen-toks", type=int, default=1280)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    adapters = dict(a.split("=", 1) for a in args.adapter)
    args.out.mkdir(parents=True, exist_ok=True)
    records = evaluate_all(args.out, adapters, args.limit, args.max_gen_toks, args.precision)
    summary = {
        "settings": {"limit": args.limit, "max_gen_toks": args.max_gen_toks, "precision": args.precision},
        "scores": {n: r["scores"] for n, r in records.items()},
        "tasks": {n: r.get("tasks") for n, r in records.items()},
        "seconds": {n: r["seconds"] for n, r in records.items()},
        "paired": paired_stats(args.out, list(adapters)),
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({n: s.get("ifeval") for n, s in summary["scores"].items()}, indent=1))


if __name__ == "__main__":
    main()
