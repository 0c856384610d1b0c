"""Drift at matched task gain from the evaluation items: CIs over seeds *and* items.

:func:`ssr.report.curves.matched_rows` interpolates each run's aggregate drift where its task-gain
curve crosses the matched gain; its CI resamples seeds only. Every curve measure is a function of
its evaluation's items — a mean (IFEval, refusal leak, kl_task), a mean of per-set or
per-benchmark means (out-of-domain over-refusal, the multiple-choice mean), or a sum relative to
the base evaluation's (self-drift, reply length) — so the same interpolation, applied item by
item between the two evaluations around the crossing, gives each run's items at the matched
gain. A two-way bootstrap then resamples the items (one draw for every run and method: the items
are paired) and each method's seeds; a method − reference difference takes both from the same
replicate. A measure is left to the seed-only CI where some run lacks its items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssr.eval.items import TASKS_PREFIX
from ssr.report.curves import CURVE_MEASURES, Point, crossing, curve, point_tag
from ssr.report.paired import Measure, leaf_sources, run_items, shared_ids, values_at
from ssr.report.runs import DRIFT_MEASURES, primary_keys
from ssr.report.stats import DEFAULT_BOOT, DEFAULT_SEED, percentile_interval


def _stratum(sources: Sequence[str], metric: str) -> Measure:
    """One item metric over pooled item sources (a :class:`~ssr.report.paired.Measure`)."""
    return Measure(metric, tuple(sources), metric)


@dataclass(frozen=True)
class ItemMeasure:
    """A curve measure from items: the mean over ``strata`` of each stratum's item mean; with
    ``to_base``, the (single) stratum's item sum over the base evaluation's sum, minus ``to_base``."""

    strata: tuple[Measure, ...]
    to_base: float | None = None


def item_measure(name: str, sources: Collection[str], point: Point) -> ItemMeasure | None:
    """How the curve measure ``name`` (a :data:`~ssr.report.curves.CURVE_MEASURES` key) is computed
    from the item ``sources`` an evaluation has, for a curve ``point`` with its flat score keys;
    ``None`` where the items cannot give it."""
    fixed = {
        "self_drift": (ItemMeasure((_stratum(["self_drift"], "nll_sum"),), to_base=1.0), "self_drift"),
        "kl_task": (ItemMeasure((_stratum(["kl_task"], "kl"),)), "kl_task"),
        "ifeval": (ItemMeasure((_stratum(["ifeval"], "prompt_level_loose_acc"),)), "ifeval"),
        "refusal_leak": (ItemMeasure((_stratum(["ifeval"], "leak"),)), "ifeval"),
        "reply_length": (ItemMeasure((_stratum(["ifeval"], "n_tokens"),), to_base=0.0), "ifeval"),
    }
    if name in fixed:
        measure, source = fixed[name]
        return measure if source in sources else None
    if name == "ood_over_refusal":  # the mean over the out-of-domain sets the point has
        sets = sorted(
            k.split("/")[1]
            for k in point
            if k.startswith("tasks/ood") and k.endswith("/over_refusal") and k != CURVE_MEASURES[name]
        )
        strata = tuple(_stratum([TASKS_PREFIX + s], "over_refusal") for s in sets)
        return ItemMeasure(strata) if strata and all(s.sources[0] in sources for s in strata) else None
    if name == "mc_mean":  # the mean over the benchmarks' primary metrics (a group: its leaves' items)
        strata = []
        for key in primary_keys(point):
            _, task, metric = key.split("/", 2)
            if any(d in key for d in DRIFT_MEASURES):
                continue
            leaves = leaf_sources(task, sources)
            if not leaves:
                return None
            strata.append(_stratum(leaves, metric.split(",")[0]))
        return ItemMeasure(tuple(strata)) if strata else None
    return None


@dataclass
class _RunAt:
    """One run at the matched gain: its evaluations before and after the crossing and the weight."""

    run: Any
    before: Point
    after: Point
    t: float

    def tags(self) -> list[str]:
        return ["base", point_tag(self.before), point_tag(self.after)]

    def interpolated(self, stratum: Measure, ids: Sequence[str]) -> np.ndarray:
        before = values_at(self.run, point_tag(self.before), stratum)
        after = values_at(self.run, point_tag(self.after), stratum)
        return np.array([(1 - self.t) * before[i] + self.t * after[i] for i in ids])

    def base(self, stratum: Measure, ids: Sequence[str]) -> np.ndarray:
        values = values_at(self.run, "base", stratum)
        return np.array([values[i] for i in ids])


def _run_statistic(measure: ItemMeasure, now: list[np.ndarray], base: list[np.ndarray]) -> np.ndarray:
    """The measure of each run (leading axes kept) from per-stratum item arrays (last axis: items)."""
    if measure.to_base is not None:
        return now[0].sum(axis=-1) / base[0].sum(axis=-1) - measure.to_base
    return np.mean([values.mean(axis=-1) for values in now], axis=0)


def item_level_rows(
    rows: list[dict[str, Any]],
    runs: Sequence[Any],
    target: float,
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """``rows`` of :func:`~ssr.report.curves.matched_rows` with the value, per-run values and CI of
    each measure recomputed from the items where every run has them (``ci_over``: "seeds and
    items", ``items``: the item count, ``replicates``: the bootstrap means); the others keep their
    seed-only CI (``ci_over``: "seeds")."""
    by_method: dict[str, list[tuple[Any, list[Point]]]] = defaultdict(list)
    for run in runs:
        points = curve(run.path)
        if points:
            by_method[run.method].append((run, points))
    out = [{**r, "ci_over": "seeds"} for r in rows]
    rng = np.random.default_rng(seed)
    for name, key in CURVE_MEASURES.items():
        mine = [r for r in out if r["measure"] == name]
        at: dict[str, list[_RunAt]] = {}
        for method in sorted({r["method"] for r in mine}):
            found = [(run, crossing(points, target, key)) for run, points in by_method[method]]
            at[method] = [_RunAt(run, *c) for run, c in found if c]
        everyone = [r for method_runs in at.values() for r in method_runs]
        if not everyone:
            continue
        sources = set.intersection(
            *(set(run_items(r.run).get(tag, {})) for r in everyone for tag in r.tags())
        )
        measure = item_measure(name, sources, everyone[0].before)
        if measure is None:
            continue
        tags = {id(r.run): r.tags() for r in everyone}
        runs_at = [r.run for r in everyone]
        ids = [shared_ids(runs_at, s, lambda run, tags=tags: tags[id(run)]) for s in measure.strata]
        if not all(ids):
            continue
        draws = [rng.integers(0, len(i), size=(n_boot, len(i))) for i in ids]
        for row in mine:
            method_runs = at[row["method"]]
            now = [np.stack([r.interpolated(s, i) for r in method_runs]) for s, i in zip(measure.strata, ids)]
            base = [np.stack([r.base(s, i) for r in method_runs]) for s, i in zip(measure.strata, ids)]
            values = _run_statistic(measure, now, base)  # one per run
            per_run = _run_statistic(  # runs x replicates: each run on the resampled items
                measure, [v[:, d] for v, d in zip(now, draws)], [b[:, d] for b, d in zip(base, draws)]
            )
            seeds = rng.integers(0, len(method_runs), size=(n_boot, len(method_runs)))
            replicates = per_run[seeds, np.arange(n_boot)[:, None]].mean(axis=1)
            row.update(
                value=float(values.mean()),
                values=[float(v) for v in values],
                runs=len(method_runs),
                ci=percentile_interval(replicates, alpha),
                ci_over="seeds and items",
                items=sum(len(i) for i in ids),
                replicates=replicates,
            )
    return out
