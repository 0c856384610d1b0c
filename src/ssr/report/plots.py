"""The report's figures."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ssr.report.grid import REPORT_SET
from ssr.report.paired import benchmark_band, self_drift_band
from ssr.report.pareto import PARETO_PANELS
from ssr.report.runs import Run, _by_method, benchmark_keys, relative_change


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
        ax.set(title=title, xlabel=f"task gain: {REPORT_SET} score change (points)")
        ax.legend(fontsize=8, title="star = chosen lr", title_fontsize=7)

    return save_figure(fig, out_dir, name)
