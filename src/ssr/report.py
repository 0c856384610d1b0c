"""Run directories -> a paper-shaped markdown table and per-epoch drift plots.

Numbers come only from the runs' result files: ``summary.json`` (method, seed, selection),
``eval.json`` (base and final task metrics) and ``drift.json`` (base + per-epoch suite and
self-drift scores written by the drift callback, and the ``eval.final`` evaluation: where a run
has it, its base and model scores are the run's ``base``/``final`` suite scores, and the per-epoch
curves keep their own base, ``epoch_base``). ``write_report`` also writes ``runs.json``, the
same numbers in one file, which ``find_runs`` reads back (the notebook draws from it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Which metric stands for a benchmark in the table (lm-eval metric names).
PRIMARY_METRIC = {
    "hellaswag": "acc_norm",
    "gsm8k": "exact_match",
    "self_drift": "nll_increase_rel",
}
# drift measures (lower = less drift), kept out of the benchmark averages (kl_task, in nats per
# token, is no table column: the paired statistics and the Pareto section report it)
DRIFT_MEASURES = ("self_drift", "kl_task")
TASK_COLUMNS = ("unanswerable_f1", "answer_recall")


@dataclass
class Run:
    path: Path
    method: str
    seed: int
    selection: dict[str, Any] | None
    base: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    # per epoch: epoch (train + val), drift (suite + self-drift), tasks (task metrics), eval (all)
    seconds: list[dict[str, float]] = field(default_factory=list)
    wall_s: float | None = None
    lr: float | None = None
    # the base scores of the per-epoch evaluations (== base unless the run has an eval.final one)
    epoch_base: dict[str, float] = field(default_factory=dict)
    final_eval: bool = False  # base / final suite scores come from the eval.final evaluation
    final_eval_s: float | None = None  # its seconds (the base's too where this run computed it)

    @property
    def curve_base(self) -> dict[str, float]:
        """The base point of the per-epoch curves (older runs.json files have no ``epoch_base``)."""
        return self.epoch_base or self.base


def _flatten(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def load_run(path: Path) -> Run:
    """Read one run directory (``summary.json`` is required; the others are optional)."""
    summary = json.loads((path / "summary.json").read_text())
    run = Run(
        path=path,
        method=summary["method"],
        seed=int(summary.get("seed", 0)),
        selection=summary.get("selection"),
        wall_s=summary.get("wall_s_total", summary.get("wall_s")),
        lr=summary.get("lr", _config_lr(path)),
    )
    if (path / "eval.json").is_file():
        ev = json.loads((path / "eval.json").read_text())
        run.base.update(_flatten(ev.get("base", {})))
        run.final.update(_flatten(ev.get("final", {})))
    if (path / "drift.json").is_file():
        drift = json.loads((path / "drift.json").read_text())
        suite = lambda rec: {f"suite/{k}": v for k, v in _flatten((rec or {}).get("scores", {})).items()}  # noqa: E731
        run.base.update(suite(drift.get("base")))
        run.epoch_base.update(run.base)
        for rec in drift.get("epochs", []):
            run.epochs.append(suite(rec))
            sec = dict(rec.get("seconds") or {})
            if "drift" not in sec and "eval" in sec and "tasks" not in rec:  # older files: eval = drift
                sec["drift"] = sec["eval"]
            run.seconds.append(sec)
        if run.epochs:
            run.final.update(run.epochs[-1])
        if drift.get("final"):  # the larger end-of-training evaluation replaces the last epoch's
            for scores, rec in ((run.base, drift["final"]["base"]), (run.final, drift["final"]["model"])):
                for key in [k for k in scores if k.startswith("suite/")]:
                    del scores[key]  # a benchmark the final evaluation left out is no column either
                scores.update(suite(rec))
            run.final_eval = True
            recs = [
                drift["final"]["model"],
                *([] if drift["final"]["base"].get("cached") else [drift["final"]["base"]]),
            ]
            run.final_eval_s = round(sum(float((r.get("seconds") or {}).get("eval", 0.0)) for r in recs), 2)
    return run


def _config_lr(path: Path) -> float | None:
    """``optim.lr`` from the run's ``.hydra/config.yaml`` (runs whose summary has no ``lr``)."""
    config = path / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    lr = ((yaml.safe_load(config.read_text()) or {}).get("optim") or {}).get("lr")
    return float(lr) if lr is not None else None


def find_runs(paths: list[Path]) -> list[Run]:
    """Every directory at or below ``paths`` that holds a summary.json; a ``runs.json`` file
    (written by :func:`write_report`) given as a path is read back instead."""
    runs: list[Run] = []
    for root in map(Path, paths):
        if root.is_file():
            runs += [Run(**{**d, "path": Path(d["path"])}) for d in json.loads(root.read_text())["runs"]]
    dirs = sorted(
        {p.parent for root in paths if Path(root).is_dir() for p in Path(root).rglob("summary.json")}
    )
    return runs + [load_run(d) for d in dirs]


def export_runs(runs: list[Run], path: Path) -> Path:
    """All numbers the report uses, in one JSON file (``find_runs([path])`` reads it back)."""
    payload = {"runs": [{**asdict(r), "path": str(r.path)} for r in runs]}
    path.write_text(json.dumps(payload, indent=1))
    return path


def benchmark_keys(runs: list[Run]) -> list[str]:
    """One key per benchmark: ``suite/<task>/<primary metric>`` present in the base scores."""
    tasks: dict[str, str] = {}
    for run in runs:
        for key in run.base:
            if not key.startswith("suite/"):
                continue
            _, task, metric = key.split("/", 2)
            want = next((m for t, m in PRIMARY_METRIC.items() if t in task), "acc")
            if metric.split(",")[0] == want:
                tasks.setdefault(task, key)
    # a group's score stands for its subtasks (ssr_mmlu, not each ssr_mmlu_<subject>)
    subtasks = {t for t in tasks for g in tasks if t != g and t.startswith(g + "_")}
    return [tasks[t] for t in sorted(tasks) if t not in subtasks]


def task_keys(runs: list[Run]) -> list[str]:
    """Task-metric columns: unanswerable F1 and answer recall per set; for answerable-only sets
    (e.g. NQ open-book) the share answered (``unanswerable_accuracy``: not refused) instead of F1."""
    sets = sorted({k.split("/")[1] for r in runs for k in r.final if k.startswith("tasks/")})
    keys = []
    for name in sets:
        answerable_only = all(r.base.get(f"tasks/{name}/n_unanswerable", 1) == 0 for r in runs)
        first = "unanswerable_accuracy" if answerable_only else TASK_COLUMNS[0]
        keys += [f"tasks/{name}/{first}", *(f"tasks/{name}/{m}" for m in TASK_COLUMNS[1:])]
    return keys


def _fmt(values: list[float | None]) -> str:
    """Fractions as percent: ``mean ± std`` over the values (just the mean for one)."""
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    return f"{mean:.1f}" if len(vals) == 1 else f"{mean:.1f} ± {statistics.stdev(vals):.1f}"


def relative_change(
    run: Run,
    keys: list[str],
    scores: dict[str, float] | None = None,
    relative: bool = True,
    base: dict[str, float] | None = None,
) -> float | None:
    """Mean change vs base over the benchmarks (self-drift excluded: lower is better), relative
    to each base score (the paper's average) or, with ``relative=False``, in absolute units.

    ``scores``/``base`` default to the run's final and base scores (pass ``run.epochs[i]`` and
    ``run.curve_base`` for an epoch)."""
    scores = run.final if scores is None else scores
    base = run.base if base is None else base
    changes = [
        (scores[k] - base[k]) / (abs(base[k]) if relative else 1.0)
        for k in keys
        if k in scores and k in base and base[k] and not any(d in k for d in DRIFT_MEASURES)
    ]
    return statistics.fmean(changes) if changes else None


def _by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by method, the paper's methods first."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.method].append(r)
    known = [m for m in ("sft", "ssr", "sdft", "s3ft") if m in groups]
    return {m: groups[m] for m in known + sorted(set(groups) - set(known))}


def table(runs: list[Run]) -> str:
    """Markdown: rows base + each method (mean ± std over seeds), paper-shaped columns."""
    bench = benchmark_keys(runs)
    tasks = task_keys(runs)
    cols = tasks + bench
    header = [
        "method",
        "seeds",
        *[k.split("/", 1)[1] for k in cols],
        "avg change vs base (points)",
        "avg rel. change vs base (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_row = ["base", str(len({r.seed for r in runs}))]
    base_row += [_fmt([r.base.get(k) for r in runs]) for k in cols] + ["0.0", "0.0"]
    lines.append("| " + " | ".join(base_row) + " |")
    for method, group in _by_method(runs).items():
        row = [method, str(len(group))]
        row += [_fmt([r.final.get(k) for r in group]) for k in cols]
        row.append(_fmt([relative_change(r, bench, relative=False) for r in group]))
        row.append(_fmt([relative_change(r, bench) for r in group]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def delta_table(runs: list[Run]) -> str:
    """Markdown: change vs base of every column (points; self-drift NLL increase in %), mean ± std."""
    cols = task_keys(runs) + benchmark_keys(runs)
    header = ["method", "seeds", *[k.split("/", 1)[1] for k in cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, group in _by_method(runs).items():
        cells = [_fmt([r.final[k] - r.base[k] for r in group if k in r.final and k in r.base]) for k in cols]
        lines.append("| " + " | ".join([method, str(len(group)), *cells]) + " |")
    return "\n".join(lines)


def cost_table(runs: list[Run]) -> str:
    """Markdown: wall time per run and the drift evaluation's share of each epoch."""
    lines = [
        "| method | seed | run wall s | epoch s (train + val, mean) | suite + self-drift s per epoch (mean) "
        "| share of epoch | task metrics s (last epoch) | final evaluation s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, group in _by_method(runs).items():
        for r in sorted(group, key=lambda r: r.seed):
            epoch = [s["epoch"] for s in r.seconds if "epoch" in s]
            drift = [s["drift"] for s in r.seconds if "drift" in s]
            tasks = [s["tasks"] for s in r.seconds if "tasks" in s]
            share = (
                f"{100 * statistics.fmean(drift) / statistics.fmean(epoch):.0f}%" if epoch and drift else "–"
            )
            cells = [
                f"{r.wall_s:.0f}" if r.wall_s else "–",
                f"{statistics.fmean(epoch):.0f}" if epoch else "–",
                f"{statistics.fmean(drift):.0f}" if drift else "–",
                share,
                f"{tasks[-1]:.0f}" if tasks else "–",
                f"{r.final_eval_s:.0f}" if r.final_eval_s else "–",
            ]
            lines.append(f"| {method} | {r.seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_table(runs: list[Run]) -> str:
    lines = [
        "| method | seed | self | paraphrase | rewrite | gold | self (answerable) | self (unanswerable) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        s = r.selection or {}
        src, ans, una = (
            s.get("by_source", {}),
            s.get("by_source_answerable", {}),
            s.get("by_source_unanswerable", {}),
        )
        cells = [f"{100 * src.get(k, 0):.0f}%" for k in ("self", "paraphrase", "rewrite", "gold")]
        lines.append(
            f"| {r.method} | {r.seed} | "
            + " | ".join(cells)
            + f" | {100 * ans.get('self', 0):.0f}% | {100 * una.get('self', 0):.0f}% |"
        )
    return "\n".join(lines)


def plot_drift(runs: list[Run], out_dir: Path) -> list[Path]:
    """One PNG per benchmark: score per epoch (epoch 0 = base), a line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in benchmark_keys(runs):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        by_method: dict[str, list[list[float]]] = defaultdict(list)
        for r in runs:
            series = [r.curve_base.get(key)] + [e.get(key) for e in r.epochs]
            by_method[r.method].append([v for v in series if v is not None])
        for method, series in sorted(by_method.items()):
            n = min(len(s) for s in series)
            if n == 0:
                continue
            ax.plot(
                range(n), [statistics.fmean(s[i] for s in series) for i in range(n)], marker="o", label=method
            )
        name = key.split("/", 1)[1]
        ax.set(title=name, xlabel="epoch (0 = base)", ylabel=name.split("/")[-1])
        ax.legend()
        paths.append(save_figure(fig, out_dir, f"drift_{name.replace('/', '_').replace(',', '_')}.png"))
    return paths


def plot_summary(runs: list[Run], out_dir: Path) -> Path:
    """``drift_summary.png``: average benchmark change and self-drift per epoch, a line per method
    (mean over seeds; band = 95% CI from the per-item results, min..max over seeds without them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssr.report_stats import benchmark_band, self_drift_band

    bench = benchmark_keys(runs)
    drift_key = next((k for k in bench if "self_drift" in k), None)
    panels = [
        (
            "benchmarks: avg change vs base (points)",
            lambda r, sc: relative_change(r, bench, sc, relative=False, base=r.curve_base),
            lambda group: benchmark_band(group, bench, runs),
        )
    ]
    if drift_key:
        panels.append(
            ("self-drift: NLL increase on own answers (%)", lambda r, sc: sc.get(drift_key), self_drift_band)
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, value, band) in zip(axes[0], panels):
        bands: set[str] = set()
        for method, group in _by_method(runs).items():
            # epoch 0 is the base model: both quantities are 0 there by definition
            series = [[0.0] + [100 * v for e in r.epochs if (v := value(r, e)) is not None] for r in group]
            n = min(len(s) for s in series)
            xs = range(n)
            mean = [statistics.fmean(s[i] for s in series) for i in xs]
            (line,) = ax.plot(xs, mean, marker="o", label=f"{method} (n={len(series)})")
            # band: the 95% CI over items (and seeds) where the runs kept per-item results,
            # else the min..max over seeds
            ci = band(group)
            if ci is not None and len(ci) >= n:
                lo, hi = [c[0] for c in ci[:n]], [c[1] for c in ci[:n]]
                bands.add("95% CI (items x seeds)")
            else:
                lo = [min(s[i] for s in series) for i in xs]
                hi = [max(s[i] for s in series) for i in xs]
                bands.add("min..max over seeds")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=f"{title}\nband: {', '.join(sorted(bands))}", xlabel="epoch (0 = base)")
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "drift_summary.png")


def save_figure(fig: Any, out_dir: Path, name: str) -> Path:
    """``out_dir/name`` (PNG, 110 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(paths: list[Path], out_dir: Path, grid: list[Path] | None = None) -> Path:
    """``results.md``, ``runs.json``, ``item_stats.json`` and the plots of the runs under ``paths``.

    Without ``grid`` the runs are a learning-rate sweep: per method the lr is chosen among them and
    the tables show the runs at that lr. With ``grid`` (the directories of a one-seed lr grid) the
    lr is chosen on the grid, every run under ``paths`` must be at its method's chosen lr (e.g. the
    seeds of a second phase, with the ``eval.final`` evaluation), and the grid's runs go to
    ``grid_runs.json`` and the lr / Pareto section."""
    from ssr import report_stats as rs

    all_runs = find_runs(paths)
    if not all_runs:
        raise FileNotFoundError(f"no run directories (with summary.json) under {[str(p) for p in paths]}")
    grid_runs = find_runs(grid) if grid else []
    if grid and not grid_runs:
        raise FileNotFoundError(
            f"no run directories (with summary.json) under --grid {[str(p) for p in grid]}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    lr_runs = grid_runs or all_runs  # the learning rate is chosen on these
    # one learning rate per method, chosen on the in-domain validation task score (not on drift)
    chosen = rs.choose_lr(lr_runs, task_keys(lr_runs))
    if grid:
        stray = [r for r in all_runs if chosen.get(r.method, r.lr) != r.lr]
        if stray:
            raise ValueError(
                "runs not at the learning rate chosen on the grid: "
                + ", ".join(f"{r.path} ({r.method}, lr {r.lr} vs {chosen.get(r.method)})" for r in stray)
            )
    runs = [r for r in all_runs if chosen.get(r.method, r.lr) == r.lr]
    points = rs.pareto_points(lr_runs, task_keys(lr_runs), benchmark_keys(lr_runs), chosen)
    final_points = rs.pareto_points(runs, task_keys(runs), benchmark_keys(runs), chosen) if grid else []
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed (pip install 'ssr[report]'): writing the tables only")
        plots = []
    else:
        plots = [plot_summary(runs, out_dir), *plot_drift(runs, out_dir)]
        for pts, name in ((points, "pareto.png"), (final_points, "pareto_final.png")):
            pareto = rs.plot_pareto(pts, out_dir, name) if pts else None
            plots += [pareto] if pareto else []
    export_runs(all_runs, out_dir / "runs.json")
    if grid_runs:
        export_runs(grid_runs, out_dir / "grid_runs.json")
    item_runs = [r for r in runs if rs.has_items(r)]
    groups = _by_method(item_runs)
    bench = benchmark_keys(runs)
    changes = rs.change_rows(groups, item_runs, bench)
    differences = rs.difference_rows(groups, "sft", item_runs, bench)
    (out_dir / "item_stats.json").write_text(
        json.dumps(
            {
                "chosen_lr": chosen,
                "pareto": points,
                **({"pareto_final": final_points} if grid else {}),
                "change_vs_base": [r.to_dict() for r in changes],
                "difference_vs_sft": [r.to_dict() for r in differences],
            },
            indent=1,
        )
    )
    md = [
        "# SSR results",
        "",
        f"Runs: {len(runs)} from {', '.join(str(p) for p in paths)} (all numbers: `runs.json`)"
        + (
            f"; {len(all_runs) - len(runs)} more at other learning rates (Pareto section)"
            if len(runs) < len(all_runs)
            else ""
        )
        + (
            f"; the learning rates chosen on {len(grid_runs)} grid runs from "
            f"{', '.join(str(p) for p in grid or [])} (`grid_runs.json`)"
            if grid
            else ""
        ),
        "",
        *_final_eval_note(runs),
        "Scores in % (mean ± std over seeds) after the last epoch; the base row is the model before "
        "training. `self_drift/nll_increase_rel` is the relative increase (%) of the NLL on the base "
        "model's own answers (lower = less drift). The averages run over the benchmark columns "
        "(self-drift excluded): in points, and relative to each base score as in the paper (small "
        "base scores make the relative one jumpy).",
        "",
        table(runs),
        "",
        "## Change vs base",
        "",
        "Points (final − base), mean ± std over seeds.",
        "",
        delta_table(runs),
        "",
    ]
    md += _item_sections(changes, differences, len(item_runs), len(runs))
    md += [
        "## Learning rate and the task-gain / drift trade-off",
        "",
        f"Per method the learning rate with the best mean `{rs.SELECTION_SET}` validation task score "
        "(mean of its task columns after the last epoch) is chosen; drift never enters the choice. "
        "Task gain = that score's change vs base (points); one point per method × lr (mean over seeds).",
        "",
        rs.pareto_table(points),
        "",
        *(
            [
                "The chosen learning rates again, from the runs above (all their seeds; benchmark "
                "change from the `eval.final` evaluation where the runs have it):",
                "",
                rs.pareto_table(final_points),
                "",
            ]
            if final_points
            else []
        ),
        "## Selection statistics",
        "",
        selection_table(runs),
        "",
        "## Cost",
        "",
        cost_table(runs),
        "",
        "## Drift per epoch",
        "",
    ]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    report = out_dir / "results.md"
    report.write_text("\n".join(md) + "\n")
    return report


def _final_eval_note(runs: list[Run]) -> list[str]:
    """Where the table's benchmark and drift columns come from."""
    n = sum(r.final_eval for r in runs)
    if not n:
        return []
    return [
        f"Benchmark, self-drift and kl_task columns of {n} of {len(runs)} runs (and of their base row) "
        "come from the larger `eval.final` evaluation after training (settings in each run's "
        "`drift.json`); the per-epoch plots use the small per-epoch evaluations.",
        "",
    ]


def _item_sections(changes: list[Any], differences: list[Any], n_item_runs: int, n_runs: int) -> list[str]:
    """The paired, per-item statistics sections (empty note when no run kept item files)."""
    from ssr.report_stats import rows_table

    if not changes:
        return ["## Paired statistics", "", "No run has per-item results (`eval_items/`): none computed.", ""]
    note = (
        f"On the items every one of the {n_item_runs} runs with per-item results shares"
        + (f" ({n_runs - n_item_runs} runs without them left out)" if n_item_runs < n_runs else "")
        + ": 95% percentile bootstrap CI over items (and seeds, two-way, when a method has several; "
        "fixed seed), exact two-sided p-value (McNemar on the discordant items for 0/1 scores, sign "
        "test otherwise; * = p < 0.05), and the minimum detectable difference of a paired test at "
        "that many items (α 0.05, 80% power, the observed SD of the per-item differences). Points "
        "for scores, nats/token for `self_drift/nll` and `kl_task/kl`."
    )
    md = ["## Paired change vs base (per item)", "", note, "", rows_table(changes, "method"), ""]
    if differences:
        md += ["## Method − SFT (per item, final models)", "", rows_table(differences, "method − sft"), ""]
    return md
