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
from pathlib import Path
from typing import Any

from ssr.report.curves import (
    has_steps,
    matched_groups,
    matched_intro,
    matched_rows,
    matched_table,
    method_curves,
    plot_curves,
    run_curves,
)
from ssr.report.declines import decline_rows
from ssr.report.grid import REPORT_SET, choose_lr, selection_set
from ssr.report.matched_items import item_level_rows
from ssr.report.paired import change_rows, coverage, difference_rows, has_items, refusal_split_rows
from ssr.report.pareto import pareto_points
from ssr.report.plots import plot_drift, plot_pareto, plot_summary
from ssr.report.runs import Run, _by_method, benchmark_keys, export_runs, find_runs, task_keys
from ssr.report.stats import DEFAULT_BOOT
from ssr.report.tables import (
    cost_table,
    decline_table,
    delta_table,
    pareto_table,
    refusal_split_table,
    rows_table,
    selection_table,
    table,
    task_breakdown_table,
)

log = logging.getLogger(__name__)


def write_report(paths: list[Path], out_dir: Path, grid: list[Path] | None = None) -> Path:
    """``results.md``, ``runs.json``, ``item_stats.json`` and the plots of the runs under ``paths``.

    Without ``grid`` the runs are a learning-rate sweep: per method the lr is chosen among them and
    the tables show the runs at that lr. With ``grid`` (the directories of a one-seed lr grid) the
    lr is chosen on the grid, every run under ``paths`` must be at its method's chosen lr (e.g. the
    seeds of a second phase, with the ``eval.final`` evaluation), and the grid's runs go to
    ``grid_runs.json`` and the lr / Pareto section."""
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
    chosen = choose_lr(lr_runs, task_keys(lr_runs))
    if grid:
        stray = [r for r in all_runs if chosen.get(r.method, r.lr) != r.lr]
        if stray:
            raise ValueError(
                "runs not at the learning rate chosen on the grid: "
                + ", ".join(f"{r.path} ({r.method}, lr {r.lr} vs {chosen.get(r.method)})" for r in stray)
            )
    runs = [r for r in all_runs if chosen.get(r.method, r.lr) == r.lr]
    points = pareto_points(lr_runs, task_keys(lr_runs), benchmark_keys(lr_runs), chosen)
    final_points = pareto_points(runs, task_keys(runs), benchmark_keys(runs), chosen) if grid else []
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed (pip install 'ssr[report]'): writing the tables only")
        plots = []
    else:
        plots = [plot_summary(runs, out_dir), *plot_drift(runs, out_dir)]
        for pts, name in ((points, "pareto.png"), (final_points, "pareto_final.png")):
            pareto = plot_pareto(pts, out_dir, name) if pts else None
            plots += [pareto] if pareto else []
    export_runs(all_runs, out_dir / "runs.json")
    if grid_runs:
        export_runs(grid_runs, out_dir / "grid_runs.json")
    item_runs = [r for r in runs if has_items(r)]
    groups = _by_method(item_runs)
    bench = benchmark_keys(runs)
    covered = coverage(item_runs, bench)
    changes = change_rows(groups, covered)
    differences = difference_rows(groups, "sft", covered)
    splits = refusal_split_rows(groups, covered)
    declines = decline_rows(groups)
    (out_dir / "item_stats.json").write_text(
        json.dumps(
            {
                "chosen_lr": chosen,
                "pareto": points,
                **({"pareto_final": final_points} if grid else {}),
                "change_vs_base": [r.to_dict() for r in changes],
                "difference_vs_sft": [r.to_dict() for r in differences],
                "refusal_split": splits,
                "declines": declines,
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
        "## The task, three numbers",
        "",
        "Per task set (after the last epoch): unanswerable F1, the share of the answerable questions "
        "answered (not declined), the answers' token recall on those answered, and the combined score "
        "the learning rate is chosen on and the task gain measures (the mean of unanswerable F1 — the "
        "answered share on answerable-only sets — and the answer recall over all answerable rows).",
        "",
        task_breakdown_table(runs),
        "",
        "## Change vs base",
        "",
        "Points (final − base), mean ± std over seeds.",
        "",
        delta_table(runs),
        "",
    ]
    md += _item_sections(changes, differences, len(item_runs), len(runs))
    if splits:
        md += [
            "## Where the declines fall",
            "",
            "Answerable rows each model declines (over-refusal), split by what the base did on the same "
            "row (final models; the `eval.final` pair where it has the set; mean over seeds). A model "
            "that rehearses the base's behaviour declines more where the base declined; one that "
            "learned a new habit declines evenly. The difference's 95% CI resamples rows and seeds.",
            "",
            refusal_split_table(splits),
            "",
        ]
    if declines:
        md += [
            "## How the declines read",
            "",
            "The replies each model declines with (final models, seeds pooled; the base row is the "
            "model before training): IFEval's general instructions, which have no document, and the "
            "answerable rows of each task set. A decline is the task's configured unanswerable "
            "sentence or a common refusal; the share with the sentence whole tells a reply in the "
            "task's own words from a refusal of another kind, and the commonest reply shows which.",
            "",
            decline_table(declines),
            "",
        ]
    md += [
        "## Learning rate and the task-gain / drift trade-off",
        "",
        f"Per method the learning rate with the best mean `{selection_set(task_keys(lr_runs))}` task score "
        "(mean of its task columns after the last epoch) is chosen; drift never enters the choice. "
        + (
            "Those validation rows are disjoint from the reported test rows. "
            if selection_set(task_keys(lr_runs)) != REPORT_SET
            else f"The lr is chosen and reported on the same `{REPORT_SET}` rows (a selection leak on the task "
            "columns, not on the drift verdict). "
        )
        + f"Task gain = the `{REPORT_SET}` score's change vs base (points); one point per method × lr "
        "(mean over seeds).",
        "",
        pareto_table(points),
        "",
        *(
            [
                "The chosen learning rates again, from the runs above (all their seeds; benchmark "
                "change from the `eval.final` evaluation where the runs have it):",
                "",
                pareto_table(final_points),
                "",
            ]
            if final_points
            else []
        ),
        *_curve_section(runs, out_dir),
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


def _curve_section(runs: list[Run], out_dir: Path) -> list[str]:
    """Forgetting along training (runs evaluated every n steps): curves and drift at matched gain."""
    by_run = run_curves(runs)
    curves = method_curves(by_run)
    if not has_steps(curves):
        return []
    groups = matched_groups(curves)
    matched = matched_intro(pairwise=len(groups) > 1)
    for group in groups:
        target, rows = matched_rows({m: curves[m] for m in group})
        if target is not None:
            rows = item_level_rows(rows, by_run, target)
        matched += matched_table(target, rows, group if len(groups) > 1 else ())
    image = plot_curves(curves, out_dir) if importlib.util.find_spec("matplotlib") is not None else None
    return [
        "## Forgetting along training",
        "",
        "Each run evaluated every `eval.callback.every_n_steps` optimizer steps (task metrics "
        "included) and at its epoch ends: task gain on the in-domain test rows and each drift measure "
        "against steps, and each drift measure against task gain (one line per run).",
        "",
        *([f"![curves]({image.name})", ""] if image else []),
        *matched,
    ]


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

    if not changes:
        return ["## Paired statistics", "", "No run has per-item results (`eval_items/`): none computed.", ""]
    note = (
        f"On the items every one of the {n_item_runs} runs with per-item results shares"
        + (f" ({n_runs - n_item_runs} runs without them left out)" if n_item_runs < n_runs else "")
        + ": 95% percentile bootstrap CI over items (and seeds, two-way, when a method has several; "
        "fixed seed); a two-sided p-value (* = p < 0.05): where a side has one run, the exact test "
        "on the items (McNemar on the discordant items for 0/1 scores, sign test otherwise), where "
        "a side has several seeds, the two-way bootstrap's (twice the share of replicates on the "
        f"far side of 0, so p < 0.05 exactly where the CI leaves out 0; floor {2 / (DEFAULT_BOOT + 1):.2g}), "
        "because the "
        "exact test on the per-item seed means holds the seeds fixed and misses how much they "
        "disagree (it is kept as `item p`: do these trained models differ on these items); its "
        "Benjamini-Hochberg q over the rows of the same table (the false discovery rate at which "
        "it would be called, for the table's many tests at once), and the minimum detectable "
        "difference of a paired test at "
        "that many items (α 0.05, 80% power, the observed SD of the per-item differences). Points "
        "for scores, nats/token for `self_drift/nll` and `kl_task/kl`."
    )
    md = ["## Paired change vs base (per item)", "", note, "", rows_table(changes, "method"), ""]
    if differences:
        md += ["## Method − SFT (per item, final models)", "", rows_table(differences, "method − sft"), ""]
    return md
