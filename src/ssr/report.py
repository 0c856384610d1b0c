"""Run directories -> a paper-shaped markdown table and per-epoch drift plots.

Numbers come only from the runs' result files: ``summary.json`` (method, seed, selection),
``eval.json`` (base and final task metrics) and ``drift.json`` (base + per-epoch suite and
self-drift scores written by the drift callback).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Which metric stands for a benchmark in the table (lm-eval metric names).
PRIMARY_METRIC = {"hellaswag": "acc_norm", "gsm8k": "exact_match", "self_drift": "nll_increase_rel"}
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
    )
    if (path / "eval.json").is_file():
        ev = json.loads((path / "eval.json").read_text())
        run.base.update(_flatten(ev.get("base", {})))
        run.final.update(_flatten(ev.get("final", {})))
    if (path / "drift.json").is_file():
        drift = json.loads((path / "drift.json").read_text())
        run.base.update(
            {f"suite/{k}": v for k, v in _flatten(drift.get("base", {}).get("scores", {})).items()}
        )
        for rec in drift.get("epochs", []):
            run.epochs.append({f"suite/{k}": v for k, v in _flatten(rec.get("scores", {})).items()})
        if run.epochs:
            run.final.update(run.epochs[-1])
    return run


def find_runs(paths: list[Path]) -> list[Run]:
    """Every directory at or below ``paths`` that holds a summary.json."""
    dirs = sorted({p.parent for root in paths for p in Path(root).rglob("summary.json")})
    return [load_run(d) for d in dirs]


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
    return [tasks[t] for t in sorted(tasks)]


def task_keys(runs: list[Run]) -> list[str]:
    sets = sorted({k.split("/")[1] for r in runs for k in r.final if k.startswith("tasks/")})
    return [f"tasks/{s}/{m}" for s in sets for m in TASK_COLUMNS]


def _fmt(values: list[float], pct: bool = True) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    scale = 100 if pct else 1
    mean = statistics.fmean(vals) * scale
    if len(vals) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(vals) * scale:.1f}"


def relative_change(run: Run, keys: list[str]) -> float | None:
    """Mean relative change vs base over the benchmarks (self-drift excluded: lower is better)."""
    changes = [
        (run.final[k] - run.base[k]) / abs(run.base[k])
        for k in keys
        if k in run.final and k in run.base and run.base[k] and "self_drift" not in k
    ]
    return statistics.fmean(changes) if changes else None


def table(runs: list[Run]) -> str:
    """Markdown: rows base + each method (mean ± std over seeds), paper-shaped columns."""
    bench = benchmark_keys(runs)
    tasks = task_keys(runs)
    cols = tasks + bench
    header = ["method", "seeds", *[k.split("/", 1)[1] for k in cols], "avg rel. change vs base (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_method: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_method[r.method].append(r)
    base_row = ["base", str(len({r.seed for r in runs}))]
    base_row += [_fmt([r.base.get(k) for r in runs], pct="self_drift" not in k) for k in cols] + ["0.0"]
    lines.append("| " + " | ".join(base_row) + " |")
    order = [m for m in ("sft", "ssr", "sdft", "s3ft") if m in by_method] + sorted(
        m for m in by_method if m not in ("sft", "ssr", "sdft", "s3ft")
    )
    for method in order:
        group = by_method[method]
        row = [method, str(len(group))]
        row += [_fmt([r.final.get(k) for r in group], pct="self_drift" not in k) for k in cols]
        row.append(_fmt([relative_change(r, bench) for r in group]))
        lines.append("| " + " | ".join(row) + " |")
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
            series = [r.base.get(key)] + [e.get(key) for e in r.epochs]
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
        fig.tight_layout()
        path = out_dir / f"drift_{name.replace('/', '_').replace(',', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(paths: list[Path], out_dir: Path) -> Path:
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no run directories (with summary.json) under {[str(p) for p in paths]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_drift(runs, out_dir)
    md = [
        "# SSR results",
        "",
        f"Runs: {len(runs)} from {', '.join(str(p) for p in paths)}",
        "",
        "Scores in % (mean ± std over seeds); `self_drift/nll_increase_rel` is the relative increase of "
        "the NLL on the base model's own answers (lower = less drift).",
        "",
        table(runs),
        "",
        "## Selection statistics",
        "",
        selection_table(runs),
        "",
        "## Drift per epoch",
        "",
    ]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    report = out_dir / "results.md"
    report.write_text("\n".join(md) + "\n")
    return report
