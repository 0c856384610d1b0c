"""Drift at matched task gain from the evaluation items: CIs over seeds *and* items.

:func:`ssr.report.curves.matched_rows` interpolates each run's aggregate drift where its task-gain
curve crosses the matched gain; its CI resamples seeds only. Every curve measure is a function of
its evaluation's items — a mean (IFEval, refusal leak, kl_task), a mean of per-set or
per-benchmark means (out-of-domain over-refusal, the multiple-choice mean), or a sum relative to
the base evaluation's (self-drift, reply length) — so the same interpolation, applied item by
item between the two evaluations around the crossing, gives each run's items at the matched
gain. A two-way bootstrap then resamples the items (one draw for every run and method: the items
are paired) and each method's seeds; a method − reference difference takes both from the same
replicate. Where the in-domain test rows' items are there too, each replicate also resamples
those rows (one draw for every run and evaluation) and recomputes every run's task-gain curve, so
each run's crossing of the matched gain moves with the task-row noise, and the matching is re-run
(the target: the smallest peak among the runs a replicate draws). A measure is left to the
seed-only CI where some run lacks its items.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssr.eval.items import TASKS_PREFIX
from ssr.eval.task_metrics import weighted_scores
from ssr.report.curves import CURVE_MEASURES, Point, RunCurves, crossing_indices, gain_keys, point_tag
from ssr.report.grid import REPORT_SET
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


def _weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(1 + n_boot, n)`` item weights: ones (the observed items), then bootstrap counts."""
    return np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1 / n), size=n_boot)])


def _task_gains(
    runs: Sequence[tuple[Any, list[Point]]], n_boot: int, rng: np.random.Generator
) -> dict[int, np.ndarray] | None:
    """Each run's task gain at its curve points that have one (``{id(run): (points, 1 + n_boot)}``),
    from the in-domain test rows' items: column 0 the observed rows, then one bootstrap draw of the
    rows shared by every run and evaluation. ``None`` where some evaluation lacks its row items or
    they do not give its recorded gain."""
    if not runs:
        return None
    source = TASKS_PREFIX + REPORT_SET
    gained = {id(run): [p for p in points if "task_gain" in p] for run, points in runs}
    common: set[str] | None = None
    for run, _ in runs:
        for point in gained[id(run)]:
            ids = set(run_items(run).get(point_tag(point), {}).get(source, {}))
            common = ids if common is None else common & ids
    if not common:
        return None
    ids = sorted(common)
    weights = _weights(len(ids), n_boot, rng)
    out = {}
    for run, points in runs:
        metrics = [k.split("/")[2] for k in gain_keys(points)]
        scores = []
        for point in gained[id(run)]:
            rows = run_items(run)[point_tag(point)][source]
            rates = weighted_scores([rows[i] for i in ids], weights)
            columns = np.array([rates[m] for m in metrics])
            kept = ~np.isnan(columns)
            scores.append(np.where(kept, columns, 0).sum(axis=0) / kept.sum(axis=0))
        gains = 100 * (np.array(scores) - scores[0])
        if not np.allclose(gains[:, 0], [p["task_gain"] for p in gained[id(run)]]):
            return None  # the items are not the whole recorded set
        out[id(run)] = gains
    return out


def _point_statistics(
    run: Any,
    path: Sequence[Point],
    measure: ItemMeasure,
    ids: Sequence[Sequence[str]],
    weights: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The measure's linear part at each path point per replicate (``(points, replicates)``: the mean
    over strata of each stratum's weighted item mean, or with ``to_base`` the weighted item sum) and,
    with ``to_base``, the base evaluation's weighted sum (the denominator)."""

    def linear(tag: str) -> np.ndarray:
        parts = []
        for stratum, stratum_ids, w in zip(measure.strata, ids, weights):
            values = values_at(run, tag, stratum)
            total = w @ np.array([values[i] for i in stratum_ids])
            parts.append(total if measure.to_base is not None else total / len(stratum_ids))
        return np.mean(parts, axis=0)

    now = np.array([linear(point_tag(p)) for p in path])
    return now, (linear("base") if measure.to_base is not None else None)


def item_level_rows(
    rows: list[dict[str, Any]],
    curves: RunCurves,
    target: float,
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """``rows`` of :func:`~ssr.report.curves.matched_rows` with the value, per-run values and CI of
    each measure recomputed from the items where every run has them, the runs and curves taken from
    ``curves`` (:func:`~ssr.report.curves.run_curves`); ``items``: the item count, ``replicates``:
    the bootstrap means; ``ci_over`` says what the CI resamples: "seeds", "seeds
    and items" or, where the in-domain test rows' items are there too, "seeds, items, task rows".
    Each replicate re-runs the matching: its target is the smallest peak gain among the runs it
    draws (``target`` for the observed runs), a run that never reaches it leaves the replicate (as
    :func:`~ssr.report.curves.matched_rows` leaves it out), and a replicate without a positive
    target has no matched gain (left out; ``dropped``: their share)."""
    methods = sorted({r["method"] for r in rows})
    by_method = {m: curves.get(m, []) for m in methods}
    out = [{**r, "ci_over": "seeds"} for r in rows]
    rng = np.random.default_rng(seed)
    gains = _task_gains([rp for m in methods for rp in by_method[m]], n_boot, rng)
    over = "seeds, items, task rows"
    if gains is None:  # the observed task-gain curves in every replicate
        over = "seeds and items"
        gains = {
            id(run): np.repeat([[p["task_gain"]] for p in points if "task_gain" in p], n_boot + 1, axis=1)
            for method_runs in by_method.values()
            for run, points in method_runs
        }
    seeds = {m: rng.integers(0, len(rs), size=(n_boot, len(rs))) for m, rs in by_method.items() if rs}
    targets = np.concatenate([[target], np.full(n_boot, np.inf)])
    for method, draw in seeds.items():
        peaks = np.array([gains[id(run)].max(axis=0) for run, _ in by_method[method]])
        targets[1:] = np.minimum(targets[1:], peaks[:, 1:][draw, np.arange(n_boot)[:, None]].min(axis=1))
    for name, key in CURVE_MEASURES.items():
        mine = [r for r in out if r["measure"] == name]
        paths = {
            id(run): [p for p in points if "task_gain" in p and key in p]
            for method_runs in by_method.values()
            for run, points in method_runs
        }
        everyone = [run for m in {r["method"] for r in mine} for run, _ in by_method[m] if paths[id(run)]]
        if not everyone:
            continue
        tags = {id(run): ["base", *(point_tag(p) for p in paths[id(run)])] for run in everyone}
        sources = set.intersection(
            *(set(run_items(run).get(tag, {})) for run in everyone for tag in tags[id(run)])
        )
        measure = item_measure(name, sources, paths[id(everyone[0])][0])
        if measure is None:
            continue
        ids = [shared_ids(everyone, s, lambda run, tags=tags: tags[id(run)]) for s in measure.strata]
        if not all(ids):
            continue
        weights = [_weights(len(i), n_boot, rng) for i in ids]
        for row in mine:
            per_run = np.full((len(by_method[row["method"]]), n_boot + 1), np.nan)
            for k, (run, points) in enumerate(by_method[row["method"]]):
                path = paths[id(run)]
                if not path:
                    continue
                has_key = [key in p for p in points if "task_gain" in p]
                before, after, t, short = crossing_indices(gains[id(run)][has_key], targets)
                now, base = _point_statistics(run, path, measure, ids, weights)
                columns = np.arange(n_boot + 1)
                value = (1 - t) * now[before, columns] + t * now[after, columns]
                if measure.to_base is not None:
                    value = value / base - measure.to_base
                per_run[k] = np.where(short | (targets <= 0), np.nan, value)
            observed = per_run[:, 0][~np.isnan(per_run[:, 0])]
            drawn = per_run[:, 1:][seeds[row["method"]], np.arange(n_boot)[:, None]]  # replicates x seeds
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without a run: nan
                replicates = np.nanmean(drawn, axis=1)
            row.update(
                value=float(observed.mean()),
                values=[float(v) for v in observed],
                runs=len(observed),
                ci=percentile_interval(replicates, alpha),
                ci_over=over,
                items=sum(len(i) for i in ids),
                replicates=replicates,
                dropped=float(np.mean(targets[1:] <= 0)),
            )
    return out
