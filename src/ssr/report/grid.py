"""The learning-rate grid: the lr chosen per method on in-domain validation."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ssr.report.runs import task_keys


def lr_of(run: Any) -> float | None:
    return getattr(run, "lr", None)


def task_score(run: Any, scores: dict[str, float], keys: list[str]) -> float | None:
    """Mean of the selection set's task columns (unanswerable F1 / answered share, answer recall)."""
    vals = [scores[k] for k in keys if k in scores and not math.isnan(scores[k])]
    return statistics.fmean(vals) if vals else None


def task_keys_for(runs: list[Any]) -> list[str]:

    return task_keys(runs)


def selection_keys(task_keys: list[str]) -> list[str]:
    return [k for k in task_keys if k.split("/")[1] == SELECTION_SET]


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


SELECTION_SET = "in_domain"  # the learning rate is chosen on this task set's validation score
