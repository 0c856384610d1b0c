"""Training throughput: ssr vs TRL SFTTrainer vs the transformers Trainer, alternating rounds."""

from __future__ import annotations

from typing import Any

from common import LORA, LR, MAX_LENGTH
from harness import Context, Target, fmt, med, status

NAME = "train"
CONTENDERS = ("ssr", "trl", "hf")
SPEED = 2.0  # target: ssr tokens/s >= 2x TRL SFTTrainer


def run(ctx: Context, res: dict[str, Any]) -> None:
    o = ctx.opts
    args = {**ctx.base, "warmup": o.warmup, "steps": o.train_steps, "batch_size": o.batch_size}
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    for _ in range(o.rounds):
        for c in CONTENDERS:
            runs[c].append(ctx.runner.task(f"train_{c}", args))
    res["train_runs"] = runs


def finish(res: dict[str, Any]) -> None:
    if "train_runs" in res:
        res["train"] = summarize(res["train_runs"], res["peak_bf16"])


def summarize(train_runs: dict[str, list[dict[str, Any]]], peak: float) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": {}, "ratios": {}, "errors": {}}
    for c, runs in train_runs.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            out["errors"][c] = runs[0].get("error") if runs else "not run"
            continue
        out["summary"][c] = {
            "tokens_per_s": med([r["tokens_per_s"] for r in ok]),
            "response_tokens_per_s": med([r["response_tokens_per_s"] for r in ok]),
            "tokens_per_cpu_s": med([r["tokens_per_cpu_s"] for r in ok]),
            "pad_ratio": med([r["padded_tokens"] / r["tokens"] for r in ok]),
            "maxrss_mib": med([r["proc"]["maxrss_mib"] for r in ok]),
            "maxrss_all": [r["proc"]["maxrss_mib"] for r in ok],
            "mfu": med([r["flops_per_s"] for r in ok]) / peak if peak else float("nan"),
            "flops_per_s": med([r["flops_per_s"] for r in ok]),
            "rounds": [r["tokens_per_s"] for r in ok],
            "loadavg": [r["proc"]["loadavg_end"] for r in ok],
        }
        out["flop_model"] = ok[0].get("flop_model")
    ssr = train_runs.get("ssr", [])
    for other in ("trl", "hf"):
        pairs = [
            (a, b) for a, b in zip(ssr, train_runs.get(other, [])) if "error" not in a and "error" not in b
        ]
        if not pairs:
            continue
        out["ratios"][other] = {
            "per_round": [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs],
            "tokens_per_s": med([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]),
            "tokens_per_cpu_s": med([a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in pairs]),
            "rss": med([a["proc"]["maxrss_mib"] for a, _ in pairs])
            / med([b["proc"]["maxrss_mib"] for _, b in pairs]),
        }
    return out


def setting() -> str:
    """The shared training setting, read from the shipped config (common.py), not restated."""
    lora = f"LoRA r{LORA['r']}/alpha{LORA['lora_alpha']}/dropout{LORA['lora_dropout']} on {LORA['target_modules']}"
    return f"{lora}, max length {MAX_LENGTH}, lr {LR:g}"


def render(res: dict[str, Any]) -> list[str]:
    tr = res.get("train")
    if not tr:
        return []
    o = res["options"]
    lines = [
        "## Training throughput",
        "",
        f"{o['rounds']} rounds x {o['warmup']} warmup + {o['train_steps']} measured optimizer "
        f"steps ({(o['warmup'] + o['train_steps']) * o['batch_size']} rows, one epoch) per contender; "
        "tokens are real (non-padding) tokens; throughput from the end of the warmup step to the end "
        "of the last step (data loading, optimizer and logging included). Peak RSS: the contender "
        "process's `ru_maxrss` (includes its imports).",
        "",
        "| contender | tokens/s | response tokens/s | tokens/CPU-s | padded/real tokens | peak RSS MiB | "
        "MFU | tokens/s per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "ssr": f"ssr (SSRModule + SSRDataModule, Lightning {o.get('train_precision', 'bf16-mixed')})",
        "trl": "TRL SFTTrainer (prompt/completion, completion-only loss)",
        "hf": "transformers Trainer (labels masked)",
    }
    for c in CONTENDERS:
        s = tr["summary"].get(c)
        if not s:
            lines.append(f"| {names[c]} | failed: {tr['errors'].get(c, '')} | | | | | | |")
            continue
        lines.append(
            f"| {names[c]} | {fmt(s['tokens_per_s'])} | {fmt(s['response_tokens_per_s'], 2)} | "
            f"{fmt(s['tokens_per_cpu_s'])} | {fmt(s['pad_ratio'], 2)} | {fmt(s['maxrss_mib'], 0)} | "
            f"{fmt(100 * s['mfu'], 1)}% | {', '.join(fmt(x) for x in s['rounds'])} |"
        )
    lines += [""]
    for other in ("trl", "hf"):
        r = tr["ratios"].get(other)
        if r:
            lines.append(
                f"- ssr / {other}: tokens/s {fmt(r['tokens_per_s'], 2)}x (median of per-round ratios "
                f"{', '.join(fmt(x, 2) for x in r['per_round'])}), tokens per CPU-second "
                f"{fmt(r['tokens_per_cpu_s'], 2)}x, peak RSS {fmt(r['rss'], 2)}x."
            )
    fm = tr.get("flop_model") or {}
    if fm:
        lines += [
            "",
            "MFU = model FLOP/s / measured bf16 matmul peak. Model FLOPs of a LoRA step with a frozen "
            "base, per row of T tokens with R response tokens: "
            "`(4*N_lin + 6*N_lora)*T + 6*L*d_attn*T^2 + 4*V*d*R` (frozen linears: forward 2NT + "
            "input-gradient 2NT, no weight gradient; LoRA: 6 per parameter; causal attention; output "
            "head only where a loss is taken), "
            f"with N_lin = {fm['n_linear'] / 1e6:.1f}M, N_lora = {fm['n_lora'] / 1e6:.2f}M, "
            f"L = {fm['n_layers']}, d_attn = {fm['d_attn']}, V = {fm['vocab']}, d = {fm['d_model']}. "
            "The same useful-FLOP count is used for every contender (work a contender wastes, e.g. "
            "logits at prompt positions or padding, is not credited).",
        ]
    lines.append("")
    return lines


def targets(res: dict[str, Any]) -> list[Target]:
    tr = res.get("train") or {}
    r = (tr.get("ratios") or {}).get("trl")
    if not r:
        return [(f"training >= {SPEED}x TRL", "n/a", status(None))]
    s = tr["summary"]
    precision = res["options"].get("train_precision")
    return [
        (
            f"training tokens/s >= {SPEED}x TRL SFTTrainer ({precision})",
            f"{r['tokens_per_s']:.2f}x wall ({r['tokens_per_cpu_s']:.2f}x per CPU-second)",
            status(r["tokens_per_s"] >= SPEED),
        ),
        (
            "training peak memory <= TRL SFTTrainer",
            f"{s['ssr']['maxrss_mib']:.0f} vs {s['trl']['maxrss_mib']:.0f} MiB ({r['rss']:.2f}x)",
            status(r["rss"] <= 1.0),
        ),
    ]
