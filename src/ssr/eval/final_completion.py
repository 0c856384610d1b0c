"""Add measures to a finished run's ``eval.final`` records (``ssr-eval +run=<run dir>``).

A run trained with ``eval.final`` holds the base and the trained model at the final settings in
``drift.json`` (``final.base``, ``final.model``) and their items under ``eval_items/final_base`` and
``eval_items/final``. A measure added to ``eval.final`` after training (e.g. ``eval.final.tasks``:
over-refusal on every answerable out-of-domain row) is evaluated on the same two models and merged
into those records, as if the run had measured it: ``ssr-report`` reads them alike. Nothing
already there is replaced: a measure the records hold already is refused before any evaluation,
and each completion is listed under ``final.completed`` (what, when, how long).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ssr.eval.drift_callback import DRIFT_FILE, score_deltas
from ssr.eval.evaluator import SELF_DRIFT_KEY, EvalRecord, Evaluator, write_json
from ssr.eval.ifeval import IFEVAL_KEY
from ssr.eval.items import FINAL_BASE_TAG, FINAL_TAG, ITEMS_DIR, ItemSink
from ssr.eval.kl_task import KL_TASK_KEY

COMPLETION_DIR = ".final_completion"  # the new item files, before they join eval_items/


def final_records(run_dir: Path) -> dict[str, Any]:
    """The run's ``drift.json`` (which must hold ``final``: the run was trained with eval.final)."""
    path = Path(run_dir) / DRIFT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no drift.json (not a training run directory?)")
    drift = json.loads(path.read_text(encoding="utf-8"))
    if not drift.get("final"):
        raise ValueError(f"{path} has no 'final' records: train the run with eval.final.enabled=true first")
    return drift


def run_precision(run_dir: Path) -> str | None:
    """The precision the run was trained and evaluated at (``summary.json``), which its added
    measures use too: the base and the model are compared as the run compared them."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    precision = json.loads(path.read_text(encoding="utf-8")).get("precision")
    return precision.get("precision") if isinstance(precision, dict) else precision


def planned_measures(final: Evaluator) -> dict[str, list[str]]:
    """What the final evaluator would measure: ``scores`` keys and task sets."""
    scores = list(final.suite.tasks)
    scores += [SELF_DRIFT_KEY] if final.self_drift.enabled else []
    scores += [KL_TASK_KEY] if final.kl_task.enabled else []
    scores += [IFEVAL_KEY] if final.ifeval.cfg.enabled else []
    return {"scores": scores, "tasks": sorted(final.task_sets)}


def check_new(drift: dict[str, Any], final: Evaluator, run_dir: Path) -> dict[str, list[str]]:
    """The planned measures, none of which the final records hold already (else ``ValueError``
    naming them: turn them off in ``eval.final`` to add the others)."""
    planned = planned_measures(final)
    if not any(planned.values()):
        raise ValueError("eval.final measures nothing: give eval.final.tasks (or another eval.final part)")
    records = (drift["final"]["base"], drift["final"]["model"])
    held = {
        "scores": {k for rec in records for k in rec.get("scores", {})},
        "tasks": {k for rec in records for k in rec.get("tasks") or {}},
    }
    clash = sorted(
        {f"scores.{k}" for k in planned["scores"] if k in held["scores"]}
        | {f"tasks.{k}" for k in planned["tasks"] if k in held["tasks"]}
    )
    if clash:
        raise ValueError(
            f"{Path(run_dir) / DRIFT_FILE}: its final records hold {clash} already; turn those parts "
            "off in eval.final (e.g. +eval.final.suite.tasks=[] +eval.final.self_drift.enabled=false "
            "+eval.final.kl_task.enabled=false +eval.final.ifeval.enabled=false)"
        )
    return planned


def completion_sinks(run_dir: Path) -> tuple[ItemSink, ItemSink]:
    """Item sinks for the new base and model items (moved into eval_items/ by :func:`merge_final`)."""
    root = Path(run_dir) / COMPLETION_DIR
    shutil.rmtree(root, ignore_errors=True)
    return ItemSink(root, FINAL_BASE_TAG), ItemSink(root, FINAL_TAG)


def merge_final(
    run_dir: Path,
    drift: dict[str, Any],
    final: Evaluator,
    planned: dict[str, list[str]],
    base: EvalRecord,
    model: EvalRecord,
    seconds: float,
    precision: str | None = None,
) -> Path:
    """Merge the new base/model records and their items into the run's final records."""
    run_dir = Path(run_dir)
    out = drift["final"]
    for old, new in ((out["base"], base), (out["model"], model)):
        old.setdefault("scores", {}).update(new.get("scores", {}))
        if new.get("tasks"):
            old.setdefault("tasks", {}).update(new["tasks"])
        spent = {} if new.get("cached") else new.get("seconds") or {}  # a cached base cost nothing here
        old_seconds = old.setdefault("seconds", {})
        for key, value in spent.items():
            old_seconds[key] = round(float(old_seconds.get(key, 0.0)) + float(value), 2)
    out["model"]["delta"] = score_deltas(out["model"]["scores"], out["base"]["scores"])
    added = {  # the settings of the parts measured here (the run's own stay as they were)
        **({"suite": asdict(final.suite)} if final.suite.tasks else {}),
        **({"self_drift": asdict(final.self_drift)} if SELF_DRIFT_KEY in planned["scores"] else {}),
        **({"kl_task": asdict(final.kl_task.cfg)} if KL_TASK_KEY in planned["scores"] else {}),
        **({"ifeval": asdict(final.ifeval.cfg)} if IFEVAL_KEY in planned["scores"] else {}),
        **({"tasks": asdict(final.tasks)} if planned["tasks"] else {}),
    }
    settings = out.setdefault("settings", {})
    for key, value in added.items():
        settings.setdefault(key, value)  # suite etc. of the run itself stay (its measures are there)
    out.setdefault("completed", []).append(
        {
            **planned,
            "settings": added,
            "precision": precision,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 2),
        }
    )
    staged = run_dir / COMPLETION_DIR
    for tag in (FINAL_BASE_TAG, FINAL_TAG):
        dest = run_dir / ITEMS_DIR / tag
        dest.mkdir(parents=True, exist_ok=True)
        for item_file in sorted((staged / tag).glob("*.jsonl")) if (staged / tag).is_dir() else []:
            item_file.replace(dest / item_file.name)  # same file system: a rename
    path = run_dir / DRIFT_FILE
    write_json(path, drift)
    shutil.rmtree(staged, ignore_errors=True)
    return path
