"""ssr-generate and ssr-judge: the cached stages on their own, with the training config.

    ssr-generate method=ssr            # the base model's own answers (and rewrites for sdft/s3ft)
    ssr-judge method=ssr judge=rule_qa # generation (cached) + judging + selection.jsonl
A later ``ssr-train`` with the same config finds every row in the caches.
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, build, resolve_precision
from ssr.cli.guard import exits_on_config_error, preflight_stage
from ssr.pipeline import StageCounters, generate_candidates

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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def judge_main(cfg: DictConfig) -> None:
    judge(cfg)
