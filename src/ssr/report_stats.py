"""Item-level statistics for ``ssr-report``: paired changes vs base and method - SFT with CIs and
exact p-values, sample sizes and minimum detectable differences, the learning-rate choice per
method and the Pareto plot (task gain vs drift).

Everything is computed on the items every compared run shares (``<run>/eval_items``, see
:mod:`ssr.eval.items`); runs without item files are left out of these tables. A measure that a
run's ``eval.final`` evaluation has is compared there (``final_base`` vs ``final``: larger
samples); the others (the task metrics) on ``base`` vs the last epoch.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
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
from ssr.stats import (
    DEFAULT_BOOT,
    DEFAULT_SEED,
    Estimate,
    bootstrap_means,
    difference_sd,
    method_difference,
    minimum_detectable_difference,
    paired_change,
    percentile_interval,
)

ALPHA = 0.05
SELECTION_SET = "in_domain"  # the learning rate is chosen on this task set's validation score
TASK_ITEM_METRICS = {"unanswerable_correct": "unanswerable_accuracy", "answer_recall": "answer_recall"}


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


def measures(runs: list[Any], benchmark_keys: list[str]) -> list[Measure]:
    """Benchmarks (a group = its leaf tasks' documents), task-set metrics, self-drift, kl_task."""
    sources = sorted({s for r in runs for tag in run_items(r).values() for s in tag})
    out = []
    for key in benchmark_keys:
        _, task, metric = key.split("/", 2)
        if task in ("self_drift", "kl_task"):
            continue
        leaves = tuple(
            s for s in sources if s in (LM_EVAL_PREFIX + task,) or s.startswith(f"{LM_EVAL_PREFIX}{task}_")
        )
        if leaves:
            out.append(Measure(f"{task}/{metric}", leaves, metric))
    for source in sources:
        if source.startswith(TASKS_PREFIX):
            name = source[len(TASKS_PREFIX) :]
            out += [Measure(f"{name}/{label}", (source,), m) for m, label in TASK_ITEM_METRICS.items()]
    if "self_drift" in sources:
        out.append(Measure("self_drift/nll", ("self_drift",), "nll", 1.0, higher_is_better=False))
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


def change_rows(groups: dict[str, list[Any]], all_runs: list[Any], bench: list[str]) -> list[Row]:
    """Paired change final - base per group and measure, on the items all ``all_runs`` share."""
    rows = []
    for measure in measures(all_runs, bench):
        tags = functools.partial(pair_tags, measure=measure)
        ids = shared_ids(all_runs, measure, lambda r, tags=tags: list(tags(r)))
        if not ids:
            continue
        for name, group in groups.items():
            base = _matrix(group, lambda r, tags=tags: tags(r)[0], measure, ids).mean(axis=0)
            final = _matrix(group, lambda r, tags=tags: tags(r)[1], measure, ids)
            est = paired_change(base, final)
            sd = difference_sd(final.mean(axis=0) - base, base)
            rows.append(Row(name, measure, est, minimum_detectable_difference(len(ids), sd, ALPHA)))
    return rows


def difference_rows(
    groups: dict[str, list[Any]], reference: str, all_runs: list[Any], bench: list[str]
) -> list[Row]:
    """Final scores of each group minus the ``reference`` group's, on shared items."""
    if reference not in groups:
        return []
    rows = []
    for measure in measures(all_runs, bench):
        tags = functools.partial(pair_tags, measure=measure)
        final = lambda r, tags=tags: tags(r)[1]  # noqa: E731
        ids = shared_ids(all_runs, measure, lambda r, final=final: [final(r)])
        if not ids:
            continue
        ref = _matrix(groups[reference], final, measure, ids)
        for name, group in groups.items():
            if name == reference:
                continue
            other = _matrix(group, final, measure, ids)
            est = method_difference(ref, other)
            sd = difference_sd(other.mean(axis=0) - ref.mean(axis=0), ref.mean(axis=0))
            rows.append(Row(name, measure, est, minimum_detectable_difference(len(ids), sd, ALPHA)))
    return rows


def _cell(value: float, scale: float) -> str:
    return f"{value * scale:+.{1 if scale != 1 else 3}f}"


def rows_table(rows: list[Row], title_col: str) -> str:
    """Markdown: one line per (group, measure): change, 95% CI, exact p, n, MDD; * = p < 0.05."""
    lines = [
        f"| {title_col} | measure | n items | seeds | change | 95% CI | p | test | MDD (80% power) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        e, s = row.estimate, row.measure.scale
        mark = " *" if e.p_value is not None and e.p_value < ALPHA else ""
        lines.append(
            f"| {row.group} | {row.measure.name} | {e.n_items} | {e.n_seeds} | {_cell(e.mean, s)}{mark} "
            f"| [{_cell(e.lo, s)}, {_cell(e.hi, s)}] | {e.p_value:.3g} | {e.test} | {row.mdd * s:.{1 if s != 1 else 3}f} |"
        )
    return "\n".join(lines)


# --- learning rate ---------------------------------------------------------------------------------


def lr_of(run: Any) -> float | None:
    return getattr(run, "lr", None)


def task_score(run: Any, scores: dict[str, float], keys: list[str]) -> float | None:
    """Mean of the selection set's task columns (unanswerable F1 / answered share, answer recall)."""
    vals = [scores[k] for k in keys if k in scores and not math.isnan(scores[k])]
    return statistics.fmean(vals) if vals else None


def task_keys_for(runs: list[Any]) -> list[str]:
    from ssr.report import task_keys

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


def pareto_points(
    runs: list[Any], task_keys: list[str], bench: list[str], chosen: dict[str, float | None] | None = None
) -> list[dict[str, Any]]:
    """One point per method x lr (mean over seeds): task gain, the drift measures and, per drift
    measure, whether the point is on the Pareto front (``front``). ``chosen``: the lr per method
    (default: :func:`choose_lr` on these runs)."""
    from ssr.report import relative_change

    keys = selection_keys(task_keys)
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
            }
        )
    for p in points:
        p["front"] = [key for key, _ in PARETO_PANELS if on_front(p, points, key)]
    return points


def on_front(point: dict[str, Any], points: list[dict[str, Any]], key: str) -> bool:
    """No other point has at least the task gain and at most the drift (lower ``self_drift`` /
    ``kl_task``; for ``benchmark_change`` higher is better), one of them strictly."""
    sign = -1.0 if key == "benchmark_change" else 1.0

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
)


def plot_pareto(points: list[dict[str, Any]], out_dir: Path, name: str = "pareto.png") -> Path | None:
    """``name`` (``pareto.png``): task gain (x) vs each drift measure (y), a point per method x lr, the
    chosen lr of each method drawn as a star."""
    panels = [(k, t) for k, t in PARETO_PANELS if any(p[k] is not None for p in points)]
    if not panels or not any(p["task_gain"] is not None for p in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    colors: dict[str, Any] = {}
    for ax, (key, title) in zip(axes[0], panels):
        for p in points:
            if p["task_gain"] is None or p[key] is None:
                continue
            color = colors.setdefault(p["method"], f"C{len(colors)}")
            ax.scatter(
                p["task_gain"],
                p[key],
                color=color,
                marker="*" if p["chosen"] else "o",
                s=160 if p["chosen"] else 40,
                edgecolors="black" if p["chosen"] else "none",
                label=p["method"] if p["chosen"] else None,
                zorder=3,
            )
            ax.annotate(
                f"{p['lr']:g}" if p["lr"] is not None else "",
                (p["task_gain"], p[key]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(title=title, xlabel=f"task gain: {SELECTION_SET} score change (points)")
        ax.legend(fontsize=8, title="star = chosen lr", title_fontsize=7)
    from ssr.report import save_figure

    return save_figure(fig, out_dir, name)


def pareto_table(points: list[dict[str, Any]]) -> str:
    def f(v: float | None, digits: int = 1) -> str:
        return "–" if v is None else f"{v:+.{digits}f}"

    lines = [
        "| method | lr | seeds | chosen | task gain (points) | benchmark change (points) | self-drift (%) "
        "| kl_task | on the Pareto front of |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lr = "–" if p["lr"] is None else f"{p['lr']:g}"
        front = ", ".join(p.get("front", [])) or "–"
        lines.append(
            f"| {p['method']} | {lr} | {p['seeds']} | {'yes' if p['chosen'] else ''} | {f(p['task_gain'])} "
            f"| {f(p['benchmark_change'])} | {f(p['self_drift'])} | {f(p['kl_task'], 4)} | {front} |"
        )
    return "\n".join(lines)
