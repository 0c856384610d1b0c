"""Padding of the default SQuAD-2 training set: random vs length-grouped batches vs packing."""

from __future__ import annotations

from typing import Any

from harness import Context, Target

NAME = "padding"


def run(ctx: Context, res: dict[str, Any]) -> None:
    res["padding"] = ctx.runner.task(
        "padding", {**ctx.base, "rows": ctx.opts.epoch_rows, "batch_size": ctx.opts.batch_size}
    )


def render(res: dict[str, Any]) -> list[str]:
    pad = res.get("padding")
    if not pad or "error" in pad:
        return []
    return [
        "## Batching: padding of the default SQuAD-2 training set",
        "",
        f"{pad['rows']} rows (`data=squad_v2` defaults), batch size {pad['batch_size']}, "
        f"{pad['real_tokens']:,} real tokens (mean {pad['mean_length']:.0f} per row, "
        f"{pad['response_tokens']:,} response tokens).",
        "",
        "| batching | tokens computed | overhead |",
        "|---|---|---|",
        f"| random batches, right padding (Trainer default) | {pad['random_padded_tokens']:,} | "
        f"+{100 * (pad['random_padded_tokens'] / pad['real_tokens'] - 1):.1f}% |",
        f"| length-grouped batches (SSRDataModule) | {pad['grouped_padded_tokens']:,} | "
        f"+{100 * (pad['grouped_padded_tokens'] / pad['real_tokens'] - 1):.1f}% |",
        f"| padding-free packing (`data.packing: true`) | {pad['real_tokens']:,} | +0% "
        "(but attention over the whole pack on CPU/sdpa, see levers) |",
        "",
    ]


def targets(res: dict[str, Any]) -> list[Target]:
    return []
