"""The learning-rate grid: the lr chosen per method on in-domain validation."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any


def lr_of(run: Any) -> float | None:
    return getattr(run, "lr", None)


def task_score(run: Any, scores: dict[str, float], keys: list[str]) -> float | None:
    """Mean of the selection set's task columns (unanswerable F1 / answered share, answer recall)."""
    vals = [scores[k] for k in keys if k in scores and not math.isnan(scores[k])]
    return statistics.fmean(vals) if vals else None


def selection_set(task_keys: list[str]) -> str:
    """The set the lr is chosen on: ``in_domain_val`` (validation rows disjoint from the reported
    test rows, ``eval.tasks.selection_rows``) where runs have it, else ``in_domain`` (older runs:
    chosen and reported on the same rows, a selection leak the report states)."""
    return SELECTION_SET if any(k.split("/")[1] == SELECTION_SET for k in task_keys) else REPORT_SET


def selection_keys(task_keys: list[str]) -> list[str]:
    chosen = selection_set(task_keys)
    return [k for k in task_keys if k.split("/")[1] == chosen]


def report_keys(task_keys: list[str]) -> list[str]:
    """The in-domain test columns: the task gain that is reported (never the lr's selection rows)."""
    return [k for k in task_keys if k.split("/")[1] == REPORT_SET]


def choose_lr(runs: list[Any], task_keys: list[str]) -> dict[str, float | None]:
    """Per method, the learning rate with the best mean in-domain validation task score (final),
    never a drift metric; ties go to the smaller lr. Methods with one lr keep it."""
    keys = selection_keys(task_keys)
    by: dict[str, dict[float | None, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        score = task_score(run, run.final, keys)
        by[run.method][lr_of(run)].append(score if score is not None else -math.inf)
    chosen = {}
    for method, lrs in by.items():
        ranked = sorted(
            lrs.items(), key=lambda kv: (-statistics.fmean(kv[1]), kv[0] if kv[0] is not None else 0)
        )
        chosen[method] = ranked[0][0]
    return chosen


SELECTION_SET = "in_domain_val"  # the learning rate is chosen on this task set's score
REPORT_SET = "in_domain"  # the in-domain test rows, reported
