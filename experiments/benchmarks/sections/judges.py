"""Judge throughput: rule_qa and the HF judge (P(Yes)/P(No)) on the embedded model."""

from __future__ import annotations

from typing import Any

from harness import Context, Target, fmt

NAME = "judges"


def run(ctx: Context, res: dict[str, Any]) -> None:
    res["judges"] = ctx.runner.task(
        "judges", {**ctx.base, "hf_items": ctx.opts.judge_items, "hf_batch_size": 8, "rule_items": 5000}
    )


def render(res: dict[str, Any]) -> list[str]:
    jd = res.get("judges")
    if not jd or "error" in jd:
        return []
    h, r = jd["hf"], jd["rule_qa"]
    return [
        "## Judge throughput",
        "",
        "| judge | items | wall s | items/s | notes |",
        "|---|---|---|---|---|",
        f"| rule_qa | {r['items']} | {fmt(r['wall_s'], 3)} | {fmt(r['items_per_s'], 0)} | token recall, pure Python |",
        f"| hf (embedded SmolLM2, P(Yes)/P(No), batch {h['batch_size']}) | {h['items']} | {fmt(h['wall_s'])} | "
        f"{fmt(h['items_per_s'], 2)} | {fmt(h['prompt_tokens_per_s'])} prompt tokens/s; model load {fmt(h['load_s'])} s |",
        "",
    ]


def targets(res: dict[str, Any]) -> list[Target]:
    return []
