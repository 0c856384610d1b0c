"""The Pareto front of task score against each drift measure."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ssr.report.grid import choose_lr, lr_of, report_keys, task_score
from ssr.report.runs import relative_change


def pareto_points(
    runs: list[Any], task_keys: list[str], bench: list[str], chosen: dict[str, float | None] | None = None
) -> list[dict[str, Any]]:
    """One point per method x lr (mean over seeds): task gain, the drift measures and, per drift
    measure, whether the point is on the Pareto front (``front``). ``chosen``: the lr per method
    (default: :func:`choose_lr` on these runs)."""

    keys = report_keys(task_keys)
    chosen = choose_lr(runs, task_keys) if chosen is None else chosen
    groups: dict[tuple[str, float | None], list[Any]] = defaultdict(list)
    for run in runs:
        groups[(run.method, lr_of(run))].append(run)

    def mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None and not math.isnan(v)]
        return statistics.fmean(vals) if vals else None

    points = []
    for (method, lr), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        gains = [
            None
            if (f := task_score(r, r.final, keys)) is None or (b := task_score(r, r.base, keys)) is None
            else 100 * (f - b)
            for r in group
        ]
        bench_change = [relative_change(r, bench, relative=False) for r in group]
        points.append(
            {
                "method": method,
                "lr": lr,
                "seeds": len(group),
                "chosen": chosen.get(method) == lr,
                "task_gain": mean(gains),
                "benchmark_change": mean([None if v is None else 100 * v for v in bench_change]),
                "self_drift": mean(
                    [
                        100 * v
                        if (v := r.final.get("suite/self_drift/nll_increase_rel")) is not None
                        else None
                        for r in group
                    ]
                ),
                "kl_task": mean([r.final.get("suite/kl_task/kl") for r in group]),
                "ifeval": mean([_points(r.final, r.base, IFEVAL_KEY) for r in group]),
                "refusal_leak": mean([_points(r.final, {}, LEAK_KEY) for r in group]),
            }
        )
    for p in points:
        p["front"] = [key for key, _ in PARETO_PANELS if on_front(p, points, key)]
    return points


def _points(final: dict[str, float], base: dict[str, float], key: str) -> float | None:
    """``100 * (final - base)`` of one score (``base`` without it: 0)."""
    if key not in final:
        return None
    return 100 * (final[key] - base.get(key, 0.0)) if not base or key in base else None


def on_front(point: dict[str, Any], points: list[dict[str, Any]], key: str) -> bool:
    """No other point has at least the task gain and at most the drift (lower ``self_drift`` /
    ``kl_task`` / ``refusal_leak``; for ``benchmark_change`` and ``ifeval`` higher is better), one
    of them strictly."""
    sign = -1.0 if key in HIGHER_IS_BETTER else 1.0

    def ok(p: dict[str, Any]) -> bool:
        return p["task_gain"] is not None and p[key] is not None

    if not ok(point):
        return False
    gain, drift = point["task_gain"], sign * point[key]
    for other in points:
        if other is point or not ok(other):
            continue
        g, d = other["task_gain"], sign * other[key]
        if g >= gain and d <= drift and (g > gain or d < drift):
            return False
    return True


PARETO_PANELS = (
    ("benchmark_change", "benchmarks: avg change vs base (points)"),
    ("self_drift", "self-drift: NLL increase (%)"),
    ("kl_task", "kl_task: KL(pi0 || pi) on training prompts (nats/token)"),
    ("ifeval", "IFEval: prompt-level strict change vs base (points)"),
    ("refusal_leak", "refusal leak: IFEval replies refusing where the base did not (%)"),
)
HIGHER_IS_BETTER = ("benchmark_change", "ifeval")
IFEVAL_KEY = "suite/ifeval/prompt_level_strict_acc"
LEAK_KEY = "suite/ifeval/refusal_leak"
