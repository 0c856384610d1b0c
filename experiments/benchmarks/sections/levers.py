"""Training levers: forward + backward of the ssr loss on one batch, variants interleaved."""

from __future__ import annotations

from typing import Any

from harness import Context, Target, fmt

NAME = "levers"


def run(ctx: Context, res: dict[str, Any]) -> None:
    o = ctx.opts
    res["levers"] = ctx.runner.task(
        "levers", {**ctx.base, "batch_size": o.batch_size, "rounds": o.lever_rounds, "compile": o.compile}
    )


def render(res: dict[str, Any]) -> list[str]:
    lv = res.get("levers")
    if not lv or "error" in lv:
        return []
    lines = [
        "## Training levers (one process, same batch, variants interleaved)",
        "",
        f"Forward + backward of the ssr loss on one batch of {lv['rows']} rows ({lv['tokens']} real "
        f"tokens, padded shape {lv['padded_shape']}), median of {lv['rounds']} rounds.",
        "",
        "| variant | wall s | tokens/s | CPU s | tokens/CPU-s | loss (sum) | all rounds (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in lv["variants"].items():
        lines.append(
            f"| {k} | {fmt(v['wall_s'], 2)} | {fmt(v['tokens_per_s'])} | {fmt(v['cpu_s'], 2)} | "
            f"{fmt(v['tokens_per_cpu_s'])} | {v['loss_sum']:.4f} | {', '.join(fmt(x, 2) for x in v['all_wall_s'])} |"
        )
    if lv.get("profile"):
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in lv["profile"].items())
        lines.append(
            f"\nWhere the default variant's time goes (torch.profiler, self CPU time of one step): {shares}."
        )
    if lv.get("compile_s"):
        lines.append(f"\ntorch.compile: first (compiling) call took {fmt(lv['compile_s'])} s.")
    lines.append("")
    return lines


def targets(res: dict[str, Any]) -> list[Target]:
    return []
