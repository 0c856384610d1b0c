"""Forgetting along training: task gain and each drift measure against optimizer steps, and each
method's drift at matched task gain.

A run with ``eval.callback.every_n_steps`` has evaluations inside its epochs (``drift.json``'s
``steps``) beside the epochs' own; with the base (step 0) they make one curve per run. The task
gain at a point is the change vs base of the mean in-domain test score (``report_keys``: the
columns the lr is *not* chosen on). Comparing methods at one step count favours whichever moves
least; the comparison that matters is drift at the same task gain: :func:`drift_at_gain`
interpolates a run's drift where its gain curve first reaches a target, and :func:`matched_rows`
sets the target to the largest gain every method of a group reaches (mean over seeds, bootstrap CI
over seeds; :mod:`ssr.report.matched_items` recomputes them from the evaluation items, CIs over items
and task rows too). :func:`matched_groups` pairs each method with SFT, so each comparison has its
own matched gain.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssr.eval.items import epoch_tag, step_tag
from ssr.report.grid import report_keys, task_score
from ssr.report.plots import save_figure
from ssr.report.runs import DRIFT_MEASURES, _flatten, answerable_only, primary_keys, task_columns, task_sets
from ssr.report.stats import bootstrap_ci, group_difference, percentile_interval

# drift measures along training (drift.json score keys, flattened); lower is less drift unless
# listed in HIGHER_IS_BETTER or AT_ONE
CURVE_MEASURES = {
    "self_drift": "suite/self_drift/nll_increase_rel",
    "kl_task": "suite/kl_task/kl",
    "ifeval": "suite/ifeval/prompt_level_loose_acc",
    "refusal_leak": "suite/ifeval/refusal_leak",
    "reply_length": "suite/ifeval/length_ratio",
    "ood_over_refusal": "tasks/ood/over_refusal",  # mean over the out-of-domain sets
    "mc_mean": "suite/mc/mean",  # mean of the multiple-choice benchmarks' primary metrics
}
HIGHER_IS_BETTER = {"ifeval", "mc_mean"}
AT_ONE = {"reply_length"}  # a ratio to the base's: the nearer 1, the less drift
# "step", "epoch" (-1: the base), "inside_epoch" (1.0: an every_n_steps evaluation), "task_gain"
# and the flat scores
Point = dict[str, float]


def curve(run_dir: Path) -> list[Point]:
    """The run's evaluations in step order (base first): flat ``suite/...`` and ``tasks/...``
    scores, ``step``, and ``task_gain`` (points) where the point has task metrics."""
    path = Path(run_dir) / "drift.json"
    if not path.is_file():
        return []
    drift = json.loads(path.read_text())
    records = [r for r in [drift.get("base"), *drift.get("steps", []), *drift.get("epochs", [])] if r]
    points = []
    for rec in sorted(records, key=lambda r: (r.get("step") or 0, r.get("stage") != "base")):
        point = {f"suite/{k}": v for k, v in _flatten(rec.get("scores") or {}).items()}
        point.update({f"tasks/{k}": v for k, v in _flatten(rec.get("tasks") or {}).items()})
        point["step"] = float(rec.get("step") or 0)
        point["inside_epoch"] = float(rec.get("stage") == "step")
        point["epoch"] = float(-1 if rec.get("stage") == "base" else rec.get("epoch") or 0)
        points.append(point)
    sets = task_sets(k for p in points for k in p)
    keys = gain_keys(points)
    base = task_score(None, points[0], keys) if points else None
    for point in points:
        score = task_score(None, point, keys)
        if score is not None and base is not None:
            point["task_gain"] = 100 * (score - base)
        _add_means(point, sets)
    return points


def gain_keys(points: Sequence[Point]) -> list[str]:
    """The task gain's columns: the in-domain test set's combined-score columns (an answerable-only
    set, by the base evaluation ``points[0]``, has the share answered in place of F1)."""
    sets = task_sets(k for p in points for k in p)
    return report_keys(task_columns(sets, answerable_only(list(points[:1]))))


def _add_means(point: Point, sets: Sequence[str]) -> None:
    """The point's out-of-domain over-refusal and multiple-choice means (where it has them)."""
    refusals = [
        point[k] for name in sets if name.startswith("ood") and (k := f"tasks/{name}/over_refusal") in point
    ]
    refusals = [v for v in refusals if not math.isnan(v)]
    if refusals:
        point[CURVE_MEASURES["ood_over_refusal"]] = sum(refusals) / len(refusals)
    mc = [point[k] for k in primary_keys(point) if not any(d in k for d in DRIFT_MEASURES)]
    if mc:
        point[CURVE_MEASURES["mc_mean"]] = sum(mc) / len(mc)


def point_tag(point: Point) -> str:
    """The ``eval_items/`` tag of a curve point's evaluation (``base``, ``step_<n>``, ``epoch_<n>``)."""
    if point["inside_epoch"]:
        return step_tag(int(point["step"]))
    return "base" if point.get("epoch", 0) < 0 else epoch_tag(int(point["epoch"]))


def crossing(points: Sequence[Point], gain: float, key: str) -> tuple[Point, Point, float] | None:
    """Where the run's task gain first reaches ``gain`` among the evaluations that have ``key``:
    the evaluations before and after it and the interpolation weight ``t`` of the later one;
    ``None`` if it never does."""
    path = [p for p in points if "task_gain" in p and key in p]
    if not path:
        return None
    before, after, t, short = crossing_indices(np.array([[p["task_gain"]] for p in path]), np.array([gain]))
    return None if short[0] else (path[before[0]], path[after[0]], float(t[0]))


def crossing_indices(
    gains: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`crossing` for many replicates of a run's task gains along its path (``(points,
    replicates)``), each with its own target: the indices of the evaluations before and after,
    the weight ``t`` of the later one, and whether the replicate's curve never reaches its target."""
    lo, hi = gains[:-1], gains[1:]
    hit = (lo <= targets) & (targets <= hi) & (hi > lo)
    first, any_hit = hit.argmax(axis=0), hit.any(axis=0)
    at_start = ~any_hit & (gains[0] >= targets)
    before = np.where(any_hit, first, 0)
    after = np.where(any_hit, first + 1, 0)
    t = np.zeros(gains.shape[1])
    if len(gains) > 1:
        columns = np.arange(gains.shape[1])
        a, b = lo[first, columns], hi[first, columns]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(any_hit, (targets - a) / (b - a), 0.0)
    return before, after, t, ~any_hit & ~at_start


def drift_at_gain(points: Sequence[Point], gain: float, key: str) -> float | None:
    """``key``'s value where the run's task gain first reaches ``gain`` (linear between the two
    evaluations around the crossing); ``None`` if it never does."""
    found = crossing(points, gain, key)
    if found is None:
        return None
    before, after, t = found
    return before[key] + t * (after[key] - before[key])


def matched_rows(curves: dict[str, list[list[Point]]]) -> tuple[float | None, list[dict[str, Any]]]:
    """Per method and drift measure: the drift at the matched task gain (mean over seeds, 95%
    bootstrap CI over seeds). The matched gain is the largest gain every method's runs all reach
    (their smallest peak); ``None`` when some method never gains."""
    peaks = [
        max((p["task_gain"] for p in run if "task_gain" in p), default=-math.inf)
        for runs in curves.values()
        for run in runs
    ]
    target = min(peaks) if peaks else None
    if target is None or target <= 0:
        return None, []
    rows = []
    for method, runs in sorted(curves.items()):
        for name, key in CURVE_MEASURES.items():
            values = [v for run in runs if (v := drift_at_gain(run, target, key)) is not None]
            if not values:
                continue
            est = bootstrap_ci(values) if len(values) > 1 else None
            rows.append(
                {
                    "method": method,
                    "measure": name,
                    "value": sum(values) / len(values),
                    "ci": (est.lo, est.hi) if est else None,
                    "runs": len(values),
                    "values": values,
                }
            )
    return target, rows


def matched_differences(rows: list[dict[str, Any]], reference: str = "sft") -> list[dict[str, Any]]:
    """Each other method minus ``reference`` at the matched gain, per drift measure: the difference
    of the run means, a bootstrap CI — over seeds and items where both rows carry item-level
    ``replicates`` (:func:`ssr.report.matched_items.item_level_rows`), else over seeds — and the
    exact permutation p over the runs (:func:`ssr.report.stats.group_difference`)."""
    refs = {r["measure"]: r for r in rows if r["method"] == reference}
    out = []
    for r in rows:
        ref = refs.get(r["measure"])
        if r["method"] == reference or ref is None:
            continue
        est = group_difference(ref["values"], r["values"])
        ci, over = (est.lo, est.hi), "seeds"
        if r.get("replicates") is not None and ref.get("replicates") is not None:
            # item-level rows (ssr.report.matched_items): the same item (and task-row) draws in both
            ci, over = percentile_interval(r["replicates"] - ref["replicates"]), r["ci_over"]
        if r["measure"] in AT_ONE:
            less = abs(r["value"] - 1) < abs(ref["value"] - 1)
        else:
            less = (est.mean > 0) == (r["measure"] in HIGHER_IS_BETTER)
        out.append(
            {
                "method": r["method"],
                "measure": r["measure"],
                "difference": est.mean,
                "ci": ci,
                "ci_over": over,
                "p": est.p_value,
                "runs": (len(ref["values"]), len(r["values"])),
                "less_drift": less,
            }
        )
    return out


RunCurves = dict[str, list[tuple[Any, list[Point]]]]  # method -> its (run, curve) pairs


def run_curves(runs: Sequence[Any]) -> RunCurves:
    """Each method's runs with their curves, each ``drift.json`` read once (runs without
    evaluations inside epochs still give base + epochs; runs without any are left out)."""
    out: RunCurves = defaultdict(list)
    for run in runs:
        points = curve(run.path)
        if points:
            out[run.method].append((run, points))
    return dict(out)


def method_curves(runs: Sequence[Any] | RunCurves) -> dict[str, list[list[Point]]]:
    """Each method's run curves (from the runs, or their :func:`run_curves`)."""
    by_method = runs if isinstance(runs, dict) else run_curves(runs)
    return {method: [points for _, points in pairs] for method, pairs in by_method.items()}


def has_steps(curves: dict[str, list[list[Point]]]) -> bool:
    """Whether any run was evaluated inside its epochs (``eval.callback.every_n_steps``)."""
    return any(p["inside_epoch"] for runs in curves.values() for run in runs for p in run)


def matched_groups(methods: Collection[str], reference: str = "sft") -> list[list[str]]:
    """The methods compared at one matched gain: the reference with each other method (the largest
    gain the two reach, so one method that barely gains does not pull every comparison down to
    its level), or all of them together where the reference is absent."""
    others = sorted(m for m in methods if m != reference)
    if reference not in methods or not others:
        return [sorted(methods)]
    return [[reference, m] for m in others]


def matched_intro(pairwise: bool) -> list[str]:
    """What the matched-gain tables hold (once, above them)."""
    matched = (
        "each method against SFT at the largest gain every run of the two reaches"
        if pairwise
        else "all methods at the largest gain every run reaches"
    )
    return [
        f"Drift at matched in-domain task gain: {matched} (linear between the evaluations around it, "
        "item by item where the runs have their evaluation items; mean over runs). The 95% bootstrap "
        "CI resamples the seeds and, where the items are there (`CI over`), the items too (one draw "
        "for every run: paired); with `task rows` it also resamples the in-domain test rows (one draw "
        "for every run and evaluation) and recomputes each run's gain curve, so where each run crosses "
        "the matched gain moves with them. Each replicate re-runs the matching (its gain: the smallest "
        "peak among the runs it draws).",
        "",
        "Method − SFT at that gain: the difference of the run means, a 95% bootstrap CI (each "
        "method's runs resampled, and the shared items and task rows where `CI over` says so) and the "
        "exact two-sided permutation p-value over the runs (every split of the pooled run values; with "
        "3 runs a side no split can give p below 0.1). "
        f"`less drift`: the difference points the good way ({', '.join(sorted(HIGHER_IS_BETTER))}: "
        f"higher is better; {', '.join(sorted(AT_ONE))}: nearer 1; the others lower).",
        "",
    ]


def matched_table(target: float | None, rows: list[dict[str, Any]], group: Sequence[str] = ()) -> list[str]:
    """One matched-gain comparison (``group``: its methods, named in the heading where given)."""
    lines = [f"### {' vs '.join(group)}", ""] if group else []
    if target is None:
        return [
            *lines,
            "Matched task gain: some method never gains on the in-domain test rows; no comparison.",
            "",
        ]
    dropped = max((r.get("dropped", 0.0) for r in rows), default=0.0)
    lines += [
        f"Matched gain: **{target:+.1f} points**."
        + (
            f" In {100 * dropped:.2g}% of the bootstrap replicates the resampled task rows leave no "
            "positive gain that every run reaches; those replicates are left out (the matched gain is "
            "barely above the base: read the CIs with care)."
            if dropped
            else ""
        ),
        "",
        "| method | measure | value | 95% CI | CI over | runs | items |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else "-"
        lines.append(
            f"| {r['method']} | {r['measure']} | {r['value']:.3f} | {ci} | {r.get('ci_over', 'seeds')} "
            f"| {r['runs']} | {r.get('items', '-')} |"
        )
    differences = matched_differences(rows)
    if not differences:
        return [*lines, ""]
    lines += [
        "",
        "| method − sft | measure | difference | 95% CI | CI over | p (permutation) | runs | less drift |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in differences:
        lines.append(
            f"| {d['method']} | {d['measure']} | {d['difference']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] "
            f"| {d['ci_over']} | {d['p']:.3g} | {d['runs'][0]} vs {d['runs'][1]} "
            f"| {'yes' if d['less_drift'] else 'no'} |"
        )
    return [*lines, ""]


def plot_curves(curves: dict[str, list[list[Point]]], out_dir: Path) -> Path | None:
    """Task gain vs steps, each drift measure vs steps and vs task gain, one line per run."""
    keys = [
        (n, k)
        for n, k in CURVE_MEASURES.items()
        if any(k in p for runs in curves.values() for r in runs for p in r)
    ]
    if not curves or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(keys) + 1, figsize=(4 * (len(keys) + 1), 7), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(sorted(curves))}
    for method, runs in sorted(curves.items()):
        for n, run in enumerate(runs):
            label = method if n == 0 else None
            gained = [p for p in run if "task_gain" in p]
            axes[0][0].plot(
                [p["step"] for p in gained],
                [p["task_gain"] for p in gained],
                "o-",
                color=colors[method],
                label=label,
            )
            for col, (name, key) in enumerate(keys, start=1):
                along = [p for p in run if key in p]
                axes[0][col].plot(
                    [p["step"] for p in along], [p[key] for p in along], "o-", color=colors[method]
                )
                both = [p for p in gained if key in p]
                axes[1][col].plot(
                    [p["task_gain"] for p in both], [p[key] for p in both], "o-", color=colors[method]
                )
                axes[0][col].set(title=f"{name} vs step", xlabel="optimizer step")
                axes[1][col].set(title=f"{name} vs task gain", xlabel="in-domain task gain (points)")
    axes[0][0].set(title="task gain vs step", xlabel="optimizer step", ylabel="points")
    axes[0][0].legend(fontsize=8)
    axes[1][0].axis("off")
    return save_figure(fig, out_dir, "curves.png")
