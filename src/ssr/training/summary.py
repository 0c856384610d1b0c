"""``summary.json`` of a training run: its outcome, precision, selection and seconds per stage."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from ssr.generation.engine import resolved_choices
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hardware import process_age_s
from ssr.runtime.precision import PrecisionChoice
from ssr.training.datamodule import SSRDataModule

log = logging.getLogger("ssr.train")


def write_summary(
    cfg: DictConfig,
    trainer: L.Trainer,
    datamodule: SSRDataModule,
    adapter: Path,
    precision: PrecisionChoice,
    threads: int,
    drift_records: list[dict[str, Any]],
    fit_s: float,
    started: float,
) -> dict[str, Any]:
    """``summary.json``: the run's outcome, its precision and its stage seconds."""
    run_dir = Path(cfg.paths.output_dir)
    stats_path = run_dir / "selection_stats.json"
    summary: dict[str, Any] = {
        "method": cfg.method.name,
        "seed": cfg.seed,
        "lr": float(cfg.optim.lr),
        "run_dir": str(run_dir),
        "adapter": str(adapter),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_rows": len(datamodule.train_rows),
        "selection": json.loads(stats_path.read_text()) if stats_path.exists() else None,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        "precision": {**precision.to_dict(), "threads": threads},
        "generation_engine": resolved_choices(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    summary["stages"] = stage_seconds(summary["selection"], drift_records, fit_s, summary["wall_s"])
    # a finished run resumed (e.g. to add the eval.final evaluation): its cost is both invocations
    previous = run_dir / "summary.json"
    if previous.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            before = json.loads(previous.read_text())
            summary["wall_s_total"] = round(
                before.get("wall_s_total", before["wall_s"]) + summary["wall_s"], 1
            )
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    sel = summary["selection"] or {}
    log.info("selection by source: %s | stages: %s", sel.get("by_source"), sel.get("extra", {}).get("stages"))
    log.info("stage seconds: %s", json.dumps(summary["stages"]))
    log.info("done in %.1fs; adapter: %s", summary["wall_s"], adapter)
    return summary


def stage_seconds(
    selection: dict[str, Any] | None, drift_records: list[dict[str, Any]], fit_s: float, total_s: float
) -> dict[str, Any]:
    """Wall seconds per pipeline stage, from the run's own records (selection stats, drift records).

    ``generate``/``judge``: rows computed this run (0 when cached); ``base_eval``: suite +
    self-drift + task metrics of the base model (0 when reused); per epoch: ``train`` (training and
    validation) and ``eval``; ``task_metrics``: their share of the evaluations; ``final_eval``: the
    ``eval.final`` evaluation (its base part 0 when reused); ``fit``: all of
    ``trainer.fit`` (data preparation, i.e. generation and judging, included); ``total``: ``train()``.
    """
    stages = ((selection or {}).get("extra") or {}).get("stages") or {}
    base = next((r for r in drift_records if r["stage"] == "base"), None)
    seconds = lambda r, k: float((r or {}).get("seconds", {}).get(k, 0.0))  # noqa: E731
    epochs = [
        {"epoch": r["epoch"], "train": seconds(r, "epoch"), "eval": seconds(r, "eval")}
        for r in drift_records
        if r["stage"] == "epoch"
    ]
    final = [r for r in drift_records if r["stage"] in ("final_base", "final") and not r.get("cached")]
    return {
        "generate": round(sum(v["seconds"] for k, v in stages.items() if k.startswith("generate")), 2),
        "judge": round(sum(v["seconds"] for k, v in stages.items() if k.startswith("judge")), 2),
        "base_eval": 0.0 if base is None or base.get("cached") else seconds(base, "eval"),
        "base_eval_cached": bool(base and base.get("cached")),
        "epochs": epochs,
        "task_metrics": round(sum(seconds(r, "tasks") for r in drift_records if not r.get("cached")), 2),
        "final_eval": round(sum(seconds(r, "eval") for r in final), 2),
        "fit": round(fit_s, 2),
        "total": round(total_s, 2),
        "process": round(process_age_s(), 2),
    }
