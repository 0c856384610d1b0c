"""ssr-generate and ssr-judge: the cached stages on their own, with the training config.

    ssr-generate method=ssr            # the base model's own answers (and rewrites for sdft/s3ft)
    ssr-judge method=ssr judge=rule_qa # generation (cached) + judging + selection.jsonl
    ssr-judge audit judge=rule_qa +audit.reference=hf   # two judges on the same own answers
    ssr-judge audit '+audit.caches=[a.jsonl,b.jsonl]'  # or two verdict caches (ssr.report.judge_audit)
A later ``ssr-train`` with the same config finds every row in the caches.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, build, resolve_precision
from ssr.cli.guard import exits_on_config_error, preflight_stage
from ssr.selection.pipeline import StageCounters, generate_candidates

log = logging.getLogger("ssr.stages")


def generate(cfg: DictConfig) -> StageCounters:
    preflight_stage(cfg, endpoints=False)  # the judge is not called here
    resolve_precision(cfg)
    dm = build(cfg.data)
    counters = StageCounters()
    if not dm.method.needs_judge:
        log.info("method=%s needs no generated targets; nothing to do", dm.method.name)
        return counters
    with dm.base_generator() as generator:  # stops its servers
        generate_candidates(generator, dm.train_records, dm.prompt, dm.method, counters)
    log.info("generation: %s", counters.summary())
    return counters


def judge(cfg: DictConfig) -> dict:
    preflight_stage(cfg)
    resolve_precision(cfg)
    dm = build(cfg.data)
    dm.prepare_data()
    stats = dm.stats.to_dict()
    log.info("selection by source: %s", json.dumps(stats["by_source"]))
    log.info("stages: %s", json.dumps(stats["extra"]["stages"]))
    return stats


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def generate_main(cfg: DictConfig) -> None:
    generate(cfg)


def reference_judge(cfg: DictConfig, reference: Any) -> tuple[Any, str]:
    """The audit's judge B: a ``conf/judge`` option name (resolved against this run's config,
    as ``judge=<name>`` would be) or a full judge config mapping."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    if isinstance(reference, str):
        path = Path(CONF_DIR) / "judge" / f"{reference}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ValueError(
                f"audit.reference={reference!r}: no such judge config (choices: {', '.join(names)})"
            )
        node, name = OmegaConf.load(path), reference
    else:
        node, name = reference, str(reference.get("_target_", "reference"))
    merged = cfg.copy()
    with open_dict(merged):
        merged.judge = node
    return instantiate(merged.judge), name


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Compare judge A (``judge=``) with ``audit.reference`` on the base model's own answers,
    or two verdict caches (``audit.caches``); writes judge_audit.json / .md to the output dir."""
    from hydra.utils import instantiate

    from ssr.report.judge_audit import audit_rows, rows_from_caches, rows_from_judges, write_audit
    from ssr.selection.methods import MethodConfig

    options = dict(cfg.get("audit") or {})
    unknown = sorted(set(options) - {"reference", "caches"})
    if unknown or not options:
        raise ValueError(
            f"ssr-judge audit needs +audit.reference=<judge> or +audit.caches=[a,b] (unknown: {unknown})"
        )
    preflight_stage(cfg)
    resolve_precision(cfg)
    dm = build(cfg.data)
    if options.get("caches") is not None:
        caches = list(options["caches"])
        if len(caches) != 2:
            raise ValueError(f"audit.caches needs two verdict cache files, got {len(caches)}")
        rows, names = (
            rows_from_caches(caches[0], caches[1], dm.train_records),
            (str(caches[0]), str(caches[1])),
        )
    else:
        judge_a = instantiate(cfg.judge)
        judge_b, name_b = reference_judge(cfg, options["reference"])
        counters = StageCounters()
        with dm.base_generator() as generator:
            own = generate_candidates(
                generator, dm.train_records, dm.prompt, MethodConfig(name="ssr"), counters
            )
        rows = rows_from_judges(dm.train_records, own["self"], judge_a, judge_b, dm.cache_dir)
        names = (str(cfg.judge.get("_target_", "A")).rsplit(".", 1)[-1], name_b)
    report = audit_rows(rows)
    path = write_audit(report, Path(cfg.paths.output_dir), *names)
    overall = report["all"]
    log.info(
        "judge audit: agreement %.3f, kappa %.3f on %d rows -> %s",
        overall.agreement,
        overall.kappa,
        overall.n,
        path,
    )
    return {k: v.__dict__ for k, v in report.items()}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def _judge_main(cfg: DictConfig) -> None:
    judge(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def _audit_main(cfg: DictConfig) -> None:
    audit(cfg)


def judge_main() -> None:
    """``ssr-judge [overrides]`` runs the judge stage; ``ssr-judge audit [overrides]`` the audit."""
    if len(sys.argv) > 1 and sys.argv[1] == "audit":
        del sys.argv[1]
        _audit_main()
    else:
        _judge_main()
