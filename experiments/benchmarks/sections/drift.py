"""Drift callback overhead: the per-epoch evaluation, timed alone and from the main job's records."""

from __future__ import annotations

from typing import Any

from harness import Context, Target, fmt, status

NAME = "drift"
SHARE = 0.15  # target: drift evaluation <= 15% of an epoch, as the real run records it


def run(ctx: Context, res: dict[str, Any]) -> None:
    res["drift"] = ctx.runner.task("drift", {**ctx.base, "fraction": ctx.opts.drift_fraction})


def share(res: dict[str, Any]) -> tuple[float, float, float] | None:
    """(drift s, train s, task-metrics s) summed over the main job's epochs, from its own records."""
    epochs = (((res.get("pipeline") or {}).get("main_job") or {}).get("drift") or {}).get("epochs") or []
    if not epochs or not all(e.get("epoch") for e in epochs):
        return None
    return (
        sum(e["drift"] for e in epochs),
        sum(e["epoch"] for e in epochs),
        sum(e.get("tasks", 0.0) for e in epochs),
    )


def finish(res: dict[str, Any]) -> None:
    seconds = share(res)
    if seconds:
        res["drift_share"] = seconds[0] / seconds[1]


def render(res: dict[str, Any]) -> list[str]:
    dr = res.get("drift")
    lines = ["## Drift callback overhead", ""]
    if not dr or "pending" in dr or "error" in dr:
        why = (dr or {}).get("pending") or (dr or {}).get("error") or "not run"
        return [*lines, f"**Pending**: {why}.", ""]
    est = (
        ""
        if dr["fraction"] >= 1
        else (
            f" (measured on {dr['fraction']:.0%} of each task's docs, {fmt(dr['suite_measured_s'])} s, "
            f"scaled by {1 / dr['fraction']:.0f}; `--drift-fraction 1` runs the full suite)"
        )
    )
    return [
        *lines,
        f"`local` suite at its default limits ({', '.join(dr['tasks'])}; limits {dr['limits']}) plus "
        f"self-drift ({dr['self_drift'].get('limit') or 'all 48'} prompts), the work "
        "GeneralizationDriftCallback does after every epoch, on the LoRA model stored as "
        f"{dr.get('precision', 'bf16-mixed')} training stores it:",
        "",
        "| part | seconds |",
        "|---|---|",
        f"| lm-eval suite, first evaluation in the process (tasks built){est} | "
        f"{fmt(dr['suite_measured_s'] / dr['fraction'])} |",
        f"| self-drift, first evaluation (NLL of the base model's answers under the current model) | "
        f"{fmt(dr['self_drift_s'])} |",
        f"| first evaluation total (as at fit start) | {fmt(dr['eval_wall_s'])} |",
        f"| **every later evaluation (after each epoch): suite + self-drift** | **{fmt(dr.get('epoch_eval_s'))}** |",
        f"| one-off at fit start: base self-drift reference (answers cached under SSR_CACHE) | {fmt(dr['reference_s'])} |",
        "| **drift share of an epoch in the main job's own records** (per-epoch suite + self-drift / "
        f"epoch training) | **{fmt(100 * res.get('drift_share', float('nan')))}%** |",
        "",
        "The base evaluation at fit start and the grounded-QA task metrics (base and last epoch) "
        "come on top and are not counted here.",
        "",
    ]


def targets(res: dict[str, Any]) -> list[Target]:
    seconds = share(res)
    if not seconds:
        return [(f"drift evaluation <= {SHARE:.0%} of an epoch", "n/a", status(None))]
    drift_s, train_s, tasks_s = seconds
    return [
        (
            f"drift evaluation (suite + self-drift) <= {SHARE:.0%} of an epoch (the main job's own records)",
            f"{drift_s / train_s:.0%} ({drift_s:.1f} s / {train_s:.1f} s train; task metrics "
            f"after the last epoch {tasks_s:.1f} s more)",
            status(drift_s / train_s <= SHARE),
        )
    ]
