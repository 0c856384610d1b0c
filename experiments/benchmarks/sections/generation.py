"""Self-generation throughput: the generation variants on the main job's rows, on this CPU and
with an AVX2-only CPU emulated (oneDNN/MKL capped at AVX2, where precision auto picks fp32)."""

from __future__ import annotations

from typing import Any

from harness import AVX2_ENV, Context, Target, fmt, status

NAME = "generation"
FAST_BF16 = 1.5  # target: self-generation >= 1.5x the bf16-autocast HF path where bf16 is fast
SLOW_BF16 = 5.0  # ... and >= 5x where bf16 is slow


def run(ctx: Context, res: dict[str, Any]) -> None:
    o, skip = ctx.opts, ctx.opts.skip_set
    args = {**ctx.base, "prompts": o.gen_prompts, "max_new_tokens": o.gen_max_new, "data": o.gen_data}
    if "generation" not in skip:
        res["generation"] = ctx.runner.task("generation", args)
    if "generation_avx2" not in skip and not o.quick:
        # the slow-bf16 case on this CPU (few prompts: the bf16 path compared against runs at a few
        # GFLOP/s there)
        avx2 = {**args, "precision": "32-true", "prompts": o.gen_avx2_prompts}
        res["generation_avx2"] = {**ctx.runner.task("generation", avx2, env=AVX2_ENV), "env": AVX2_ENV}


def render(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, where in (("generation", "this CPU"), ("generation_avx2", "AVX2-only CPU emulated")):
        gen = res.get(key)
        if gen and "error" not in gen:
            lines += render_generation(gen, where)
    return lines


def render_generation(gen: dict[str, Any], where: str) -> list[str]:
    """The generation section's table (``where``: this CPU, or the emulated AVX2 one)."""
    env = " ".join(f"{k}={v}" for k, v in (gen.get("env") or {}).items())
    lines = [
        f"## Self-generation throughput ({where})",
        "",
        f"`ssr.generation.hf.hf_generate` on {gen['prompts']} {'of the main job' + chr(39) + 's own' if gen.get('data') == 'embedded' else 'SQuAD'} "
        f"grounded prompts ({gen['prompt_tokens']:,} prompt tokens), greedy, "
        f"max_new_tokens={gen['max_new_tokens']}; generated tokens counted from the decoded texts "
        "(+1 end-of-turn each). **auto** marks the row the generator runs on this machine.",
        "",
        f"Prompt forward passes alone (batches of {gen.get('prefill_batch_size')}, auto precision): "
        f"{fmt(gen.get('prefill_s'))} s. 'same text': share of outputs identical to the batched fp32 "
        "row's (bf16 rounding, batch shape and left padding change greedy paths).",
        "",
        "| variant | generated tokens | wall s | rows/s | tokens/s | vs shipped before | same text as fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    before = gen["variants"].get(gen.get("before_variant") or "", {}).get("wall_s")
    for k, v in gen["variants"].items():
        if "error" in v:
            lines.append(f"| {k} | failed: {v['error']} | | | | | |")
            continue
        sp = before / v["wall_s"] if before else float("nan")
        mark = " **(auto)**" if k == gen.get("auto_variant") else ""
        lines.append(
            f"| {k}{mark} | {v['generated_tokens']} | {fmt(v['wall_s'])} | {fmt(v.get('rows_per_s'), 2)} | "
            f"{fmt(v['tokens_per_s'])} | {fmt(sp, 2)}x | {fmt(100 * v.get('same_text_as_fp32', float('nan')), 0)}% |"
        )
    lines.append("")
    if env:
        lines.insert(3, f"Environment: `{env}`. ")
    return lines


def targets(res: dict[str, Any]) -> list[Target]:
    rows = []
    gen = res.get("generation") or {}
    variants = gen.get("variants") or {}
    before = variants.get(gen.get("before_variant") or "", {}).get("wall_s")
    bf16_fast = (res.get("precision") or {}).get("auto_choice", "").startswith("bf16")
    job = (res.get("pipeline") or {}).get("main_job") or {}
    stage_gen = (job.get("stages") or {}).get("generate")
    if before and gen.get("prompts"):
        # the self-generation stage as the main job ran it, against the previous shipped path
        # (bf16-autocast HF, batched) on the same rows
        target = FAST_BF16 if bf16_fast else SLOW_BF16
        auto = variants.get(gen.get("auto_variant") or "", {}).get("wall_s")
        measured = stage_gen or auto
        sp = before / measured if measured else float("nan")
        rows.append(
            (
                f"self-generation >= {target}x the bf16-autocast HF path "
                f"({'bf16 fast here' if bf16_fast else 'bf16 slow here'})",
                f"{sp:.2f}x ({measured:.1f} s {'main job stage' if stage_gen else 'auto row'} vs {before:.1f} s)",
                status(sp >= target),
            )
        )
    else:
        rows.append(("self-generation vs the bf16-autocast HF path", "n/a", status(None)))
    slow = res.get("generation_avx2") or {}
    slow_variants = slow.get("variants") or {}
    slow_before = slow_variants.get(slow.get("before_variant") or "", {}).get("wall_s")
    slow_auto = slow_variants.get(slow.get("auto_variant") or "", {}).get("wall_s")
    if slow_before and slow_auto:
        rows.append(
            (
                f"self-generation >= {SLOW_BF16}x the bf16-autocast HF path (AVX2-only CPU emulated, "
                f"{slow['prompts']} prompts)",
                f"{slow_before / slow_auto:.1f}x ({slow_auto:.1f} s fp32 vs {slow_before:.1f} s)",
                status(slow_before / slow_auto >= SLOW_BF16),
            )
        )
    return rows
