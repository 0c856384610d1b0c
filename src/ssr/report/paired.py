"""Item-level statistics for ``ssr-report``: paired changes vs base and method - SFT with CIs,
p-values and minimum detectable differences, where declines fall, and the per-epoch bands of the
summary plot.

Everything is computed on the items every compared run shares (``<run>/eval_items``, see
:mod:`ssr.eval.items`); runs without item files are left out of these tables. A measure that a
run's ``eval.final`` evaluation has is compared there (``final_base`` vs ``final``: larger
samples); the others (the task metrics) on ``base`` vs the last epoch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssr.eval.items import (
    FINAL_BASE_TAG,
    FINAL_TAG,
    LM_EVAL_PREFIX,
    TASKS_PREFIX,
    Items,
    final_tag,
    item_values,
    load_items,
)
from ssr.report.stats import (
    DEFAULT_BOOT,
    DEFAULT_SEED,
    Estimate,
    block_sums,
    bootstrap_means,
    difference_sd,
    method_difference,
    minimum_detectable_difference,
    paired_change,
    percentile_interval,
)

log = logging.getLogger(__name__)

ALPHA = 0.05
TASK_ITEM_METRICS = {
    "unanswerable_correct": "unanswerable_accuracy",
    "answer_recall": "answer_recall",
    "over_refusal": "over_refusal",  # answerable rows only: declined
}
# IFEval items (source ``ifeval``): metric, scale, higher is better
IFEVAL_ITEM_METRICS = (
    ("prompt_level_strict_acc", 100.0, True),
    ("prompt_level_loose_acc", 100.0, True),
    ("refused", 100.0, False),
    ("n_tokens", 1.0, True),
)


@dataclass(frozen=True)
class Measure:
    """One reported quantity: a per-item metric over one or more item sources."""

    name: str
    sources: tuple[str, ...]
    metric: str
    scale: float = 100.0  # fractions shown in points
    higher_is_better: bool = True


_ITEMS: dict[Path, dict[str, dict[str, Items]]] = {}


def run_items(run: Any) -> dict[str, dict[str, Items]]:
    """A run's item files (read once per process)."""
    path = Path(run.path)
    if path not in _ITEMS:
        _ITEMS[path] = load_items(path)
    return _ITEMS[path]


def has_items(run: Any) -> bool:
    items = run_items(run)
    return "base" in items and final_tag(items) is not None


def leaf_sources(task: str, sources: Iterable[str]) -> tuple[str, ...]:
    """The lm-eval item sources of a benchmark: its own, or its subtasks' for a group (sorted)."""
    return tuple(
        sorted(s for s in sources if s == LM_EVAL_PREFIX + task or s.startswith(f"{LM_EVAL_PREFIX}{task}_"))
    )


def measures(runs: list[Any], benchmark_keys: list[str]) -> list[Measure]:
    """Benchmarks (a group = its leaf tasks' documents), task-set metrics, IFEval, self-drift, kl_task."""
    sources = sorted({s for r in runs for tag in run_items(r).values() for s in tag})
    out = []
    for key in benchmark_keys:
        _, task, metric = key.split("/", 2)
        if task in ("self_drift", "kl_task"):
            continue
        leaves = leaf_sources(task, sources)
        if leaves:
            out.append(Measure(f"{task}/{metric}", leaves, metric))
    for source in sources:
        if source.startswith(TASKS_PREFIX):
            name = source[len(TASKS_PREFIX) :]
            out += [Measure(f"{name}/{label}", (source,), m) for m, label in TASK_ITEM_METRICS.items()]
    if "ifeval" in sources:
        out += [Measure(f"ifeval/{m}", ("ifeval",), m, s, up) for m, s, up in IFEVAL_ITEM_METRICS]
    if "self_drift" in sources:
        out.append(Measure("self_drift/nll", ("self_drift",), "nll", 1.0, higher_is_better=False))
        out.append(Measure("self_drift/stop_prob", ("self_drift",), "stop_prob", higher_is_better=False))
    if "kl_task" in sources:
        out.append(Measure("kl_task/kl", ("kl_task",), "kl", 1.0, higher_is_better=False))
    return out


def values_at(run: Any, tag: str, measure: Measure) -> dict[str, float]:
    """``{item id: value}`` of a measure in one evaluation (ids prefixed by the leaf task)."""
    by_source = run_items(run).get(tag, {})
    out: dict[str, float] = {}
    for source in measure.sources:
        prefix = f"{source}:" if len(measure.sources) > 1 else ""
        out.update({prefix + k: v for k, v in item_values(by_source.get(source, {}), measure.metric).items()})
    return out


def shared_ids(runs: list[Any], measure: Measure, tags: Callable[[Any], list[str]]) -> list[str]:
    """Item ids present in every listed evaluation of every run."""
    common: set[str] | None = None
    for run in runs:
        for tag in tags(run):
            ids = set(values_at(run, tag, measure))
            common = ids if common is None else common & ids
    return sorted(common or ())


def pair_tags(run: Any, measure: Measure) -> tuple[str, str]:
    """The (base, final) evaluations a measure is compared on: the ``eval.final`` pair when that
    evaluation has every source of the measure, else ``base`` and the last epoch."""
    items = run_items(run)
    if all(source in items.get(FINAL_TAG, {}) for source in measure.sources):
        return FINAL_BASE_TAG, FINAL_TAG
    return "base", final_tag(items) or "missing"


def _matrix(runs: list[Any], tag: Callable[[Any], str], measure: Measure, ids: list[str]) -> np.ndarray:
    rows = []
    for run in runs:
        vals = values_at(run, tag(run), measure)
        rows.append([vals[i] for i in ids])
    return np.asarray(rows, dtype=float)


@dataclass
class Row:
    group: str
    measure: Measure
    estimate: Estimate
    mdd: float

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "measure": self.measure.name, **self.estimate.to_dict(), "mdd": self.mdd}


def runs_with(runs: list[Any], measure: Measure, tags: Callable[[Any], list[str]]) -> list[Any]:
    """The runs with items of ``measure`` in each of their ``tags`` evaluations. A run without them
    (say a final evaluation whose over-refusal sets are still to come) is left out of that measure
    only, and logged, rather than taking the measure away from every run."""
    having = [r for r in runs if all(values_at(r, tag, measure) for tag in tags(r))]
    kept = {id(r) for r in having}
    for run in runs if having else []:  # a measure no run has is no measure: nothing to say
        if id(run) not in kept:
            log.warning("%s: no items of %s, left out of its item-level statistics", run.path, measure.name)
    return having


@dataclass(frozen=True)
class Coverage:
    """One measure, the runs with its items on both evaluations of their :func:`pair_tags`, and the
    item ids those runs all share: what every item-level table compares it on."""

    measure: Measure
    runs: list[Any]
    ids: list[str]


def coverage(all_runs: list[Any], bench: list[str]) -> list[Coverage]:
    """:class:`Coverage` of each of :func:`measures` that some run has items of (a run without
    them is logged once here, not once per table)."""
    out = []
    for measure in measures(all_runs, bench):
        tags = functools.partial(pair_tags, measure=measure)
        having = runs_with(all_runs, measure, lambda r, tags=tags: list(tags(r)))
        ids = shared_ids(having, measure, lambda r, tags=tags: list(tags(r)))
        if ids:
            out.append(Coverage(measure, having, ids))
    return out


def _present(groups: dict[str, list[Any]], having: list[Any]) -> dict[str, list[Any]]:
    """``groups`` cut to the runs in ``having`` (groups left empty are dropped)."""
    kept = {id(r) for r in having}
    out = {name: [r for r in group if id(r) in kept] for name, group in groups.items()}
    return {name: group for name, group in out.items() if group}


def _at(group: list[Any], cov: Coverage, which: int) -> np.ndarray:
    """Seeds x items of ``group`` on the base (``which`` 0) or final (1) evaluation of its pair."""
    return _matrix(group, lambda r: pair_tags(r, cov.measure)[which], cov.measure, cov.ids)


def _base_final(
    groups: dict[str, list[Any]], covered: list[Coverage]
) -> Iterator[tuple[Coverage, str, list[Any], np.ndarray, np.ndarray]]:
    """Per measure and group: the seeds x items matrices of the base and the final model."""
    for cov in covered:
        for name, group in _present(groups, cov.runs).items():
            yield cov, name, group, _at(group, cov, 0), _at(group, cov, 1)


def change_rows(groups: dict[str, list[Any]], covered: list[Coverage]) -> list[Row]:
    """Paired change final - base per group and measure, on the items of its :class:`Coverage`."""
    rows = []
    for cov, name, _, base_runs, final in _base_final(groups, covered):
        base = base_runs.mean(axis=0)
        est = paired_change(base, final)
        sd = difference_sd(final.mean(axis=0) - base, base)
        rows.append(Row(name, cov.measure, est, minimum_detectable_difference(len(cov.ids), sd, ALPHA)))
    return rows


def difference_rows(groups: dict[str, list[Any]], reference: str, covered: list[Coverage]) -> list[Row]:
    """Final scores of each group minus the ``reference`` group's, on the same items."""
    rows = []
    for cov in covered:
        present = _present(groups, cov.runs)
        if reference not in present:
            continue
        ref = _at(present[reference], cov, 1)
        for name, group in present.items():
            if name == reference:
                continue
            other = _at(group, cov, 1)
            est = method_difference(ref, other)
            sd = difference_sd(other.mean(axis=0) - ref.mean(axis=0), ref.mean(axis=0))
            rows.append(Row(name, cov.measure, est, minimum_detectable_difference(len(cov.ids), sd, ALPHA)))
    return rows


def refusal_split_rows(groups: dict[str, list[Any]], covered: list[Coverage]) -> list[dict[str, Any]]:
    """Where each group's declines of answerable rows fall (every ``over_refusal`` measure): the
    share declined among the rows the base declined and among those it answered (mean over the
    group's runs, on the items of its :class:`Coverage`). A method that rehearses the base's own
    behaviour declines where the base did; one that learned a new habit declines evenly."""
    out = []
    refusals = [cov for cov in covered if cov.measure.metric == "over_refusal"]
    for cov, name, group, base, final in _base_final(groups, refusals):
        declined, answered = base == 1, base == 0
        out.append(
            {
                "group": name,
                "measure": cov.measure.name,
                "n_items": len(cov.ids),
                "seeds": len(group),
                "base_declined": float(declined.mean()),
                "where_base_declined": float(final[declined].mean()) if declined.any() else None,
                "where_base_answered": float(final[answered].mean()) if answered.any() else None,
                "declined": float(final.mean()),
                "gap_ci": _gap_ci(base, final),
            }
        )
    return out


def _gap_ci(base: np.ndarray, final: np.ndarray) -> tuple[float, float] | None:
    """95% two-way bootstrap CI (rows and seeds resampled) of the share declined where the base
    declined minus where it answered; ``None`` where one kind of row is missing."""
    if not ((base == 1).any() and (base == 0).any()):
        return None
    rng = np.random.default_rng(DEFAULT_SEED)
    n_seeds, n_items = final.shape
    draws = [
        (rng.integers(0, n_items, n_items), rng.integers(0, n_seeds, n_seeds)) for _ in range(DEFAULT_BOOT)
    ]
    items, seeds = np.stack([i for i, _ in draws]), np.stack([s for _, s in draws])
    declined, answered = (base == 1).astype(float), (base == 0).astype(float)
    n_declined, n_answered = block_sums(declined, items, seeds), block_sums(answered, items, seeds)
    keep = (n_declined > 0) & (n_answered > 0)  # a replicate needs rows of both kinds
    gaps = (
        block_sums(final * declined, items, seeds)[keep] / n_declined[keep]
        - block_sums(final * answered, items, seeds)[keep] / n_answered[keep]
    )
    return percentile_interval(gaps, ALPHA)


# --- epoch bands (summary plot) -------------------------------------------------------------------


def epoch_tags(run: Any) -> list[str]:
    tags = [t for t in run_items(run) if t.startswith("epoch_")]
    return sorted(tags, key=lambda t: int(t.split("_", 1)[1]))


def _epoch_pair(group: list[Any], measure: Measure, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Seeds x items matrices of the base and of the ``epoch``-th evaluation, on shared items."""
    ids = shared_ids(group, measure, lambda r: ["base", epoch_tags(r)[epoch]])
    if not ids:
        return None
    base = _matrix(group, lambda r: "base", measure, ids)
    return base, _matrix(group, lambda r: epoch_tags(r)[epoch], measure, ids)


def benchmark_band(
    group: list[Any], bench: list[str], all_runs: list[Any]
) -> list[tuple[float, float]] | None:
    """Per epoch (epoch 0 = base), the 95% CI of the average benchmark change in points: a
    stratified bootstrap (each benchmark's items and the seeds resampled, replicates averaged)."""
    if not group or not all(has_items(r) for r in group):
        return None
    bench_measures = [m for m in measures(all_runs, bench) if m.sources[0].startswith(LM_EVAL_PREFIX)]
    n_epochs = min(len(epoch_tags(r)) for r in group)
    if not bench_measures or n_epochs == 0:
        return None
    bands = [(0.0, 0.0)]
    for e in range(n_epochs):
        replicates = []
        for k, measure in enumerate(bench_measures):
            pair = _epoch_pair(group, measure, e)
            if pair is not None:
                replicates.append(bootstrap_means(pair[1] - pair[0], DEFAULT_BOOT, DEFAULT_SEED + k))
        if not replicates:
            return None
        bands.append(percentile_interval(100 * np.mean(replicates, axis=0), ALPHA))
    return bands


def self_drift_band(group: list[Any]) -> list[tuple[float, float]] | None:
    """Per epoch, the 95% CI of the relative self-drift NLL increase (%): prompts and seeds
    resampled, the ratio of summed NLLs recomputed (the metric is token-weighted)."""
    measure = Measure("self_drift/nll_sum", ("self_drift",), "nll_sum", 1.0, False)
    if not group or not all(has_items(r) for r in group):
        return None
    n_epochs = min(len(epoch_tags(r)) for r in group)
    rng = np.random.default_rng(DEFAULT_SEED)
    bands = [(0.0, 0.0)]
    for e in range(n_epochs):
        pair = _epoch_pair(group, measure, e)
        if pair is None:
            return None
        base, now = pair[0].mean(axis=0), pair[1]
        items = rng.integers(0, len(base), size=(DEFAULT_BOOT, len(base)))
        seeds = rng.integers(0, now.shape[0], size=(DEFAULT_BOOT, now.shape[0]))
        ratios = [now[s][:, i].sum() / (len(s) * base[i].sum()) - 1 for s, i in zip(seeds, items)]
        bands.append(percentile_interval(100 * np.asarray(ratios), ALPHA))
    return bands


# --- Pareto plot ----------------------------------------------------------------------------------
