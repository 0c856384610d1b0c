"""Generation engines side by side (``gen_engines.py``): the main job's own answers, IFEval prompts at
256 and 1280 new tokens, on this CPU and with an AVX2-only CPU emulated (oneDNN/MKL capped at AVX2,
where precision auto picks fp32). Records ``generation.speedup_vs_hf`` (the chosen engine's useful
new tokens/s over today's ``hf`` path, IFEval at 256 new tokens, same run), ``speedup_vs_hf_avx2``
and ``ifeval_full_s`` (all 541 IFEval prompts at 1280 new tokens with the chosen engine;
extrapolated from a fixed random sample when ``--gen-full-prompts`` is smaller, and then marked so),
and ``matmul_bound_vs_hf`` (``_avx2``): the decode step's matmuls alone at the IFEval workload's
widest batch over ``hf``'s tokens/s, the most any exact engine on torch's matmuls could reach."""

from __future__ import annotations

from typing import Any

from harness import AVX2_ENV, Context, Target, fmt, status

NAME = "generation"
SPEEDUP = 5.0  # target: the chosen engine >= 5x today's hf path (IFEval, 256 new tokens), both CPUs
FULL_IFEVAL_S = 8 * 60  # target: all 541 IFEval prompts at 1280 new tokens within 8 minutes
IFEVAL_ROWS = 541
ENGINES = ["hf", "continuous", "continuous_sdpa"]  # the last: decode attention by torch's SDPA


def run(ctx: Context, res: dict[str, Any]) -> None:
    o, skip = ctx.opts, ctx.opts.skip_set
    own = {
        "name": "own_answers",
        "data": "embedded",
        "prompts": o.gen_prompts,
        "max_new_tokens": o.gen_max_new,
    }
    ifeval = {"name": "ifeval_256", "data": "ifeval", "prompts": o.gen_ifeval_prompts, "max_new_tokens": 256}
    full = {"name": "ifeval_1280", "data": "ifeval", "prompts": o.gen_full_prompts, "max_new_tokens": 1280}
    fidelity = {"fidelity_prompts": o.gen_fidelity_prompts, "fidelity_max_new_tokens": 64}
    if "generation" not in skip:
        workloads = [
            {**own, "engines": ENGINES},
            {**ifeval, "engines": ENGINES, **fidelity},
            {**full, "engines": ["chosen"]},
        ]
        res["generation"] = ctx.runner.task("generation_engines", {**ctx.base, "workloads": workloads})
    if "generation_avx2" not in skip and not o.quick:
        avx2_ifeval = {**ifeval, "prompts": o.gen_avx2_prompts or o.gen_ifeval_prompts, "engines": ENGINES}
        args = {**ctx.base, "precision": "32-true", "workloads": [avx2_ifeval]}
        res["generation_avx2"] = {
            **ctx.runner.task("generation_engines", args, env=AVX2_ENV),
            "env": AVX2_ENV,
        }


def _workload(gen: dict[str, Any], name: str = "ifeval_256") -> dict[str, Any]:
    """One workload's record of a generation run (empty where it is missing)."""
    return ((gen or {}).get("workloads") or {}).get(name) or {}


def _speedup(gen: dict[str, Any]) -> float | None:
    engines, chosen = _workload(gen).get("engines") or {}, ((gen or {}).get("auto") or {}).get("engine")
    if "hf" not in engines or chosen not in engines:
        return None
    return engines[chosen]["tokens_per_s"] / engines["hf"]["tokens_per_s"]


def _bound(gen: dict[str, Any]) -> float | None:
    """The matmul-only ceiling at the IFEval workload's widest batch over hf's measured tokens/s."""
    wl = _workload(gen)
    hf = (wl.get("engines") or {}).get("hf")
    if not hf or not wl.get("matmul_bound"):
        return None
    return wl["matmul_bound"][0]["tokens_per_s"] / hf["tokens_per_s"]


def finish(res: dict[str, Any]) -> None:
    """The headline figures, under ``res["generation"]``."""
    gen = res.get("generation")
    if not gen or "error" in gen:
        return
    gen["speedup_vs_hf"] = _speedup(gen)
    gen["speedup_vs_hf_avx2"] = _speedup(res.get("generation_avx2") or {})
    gen["matmul_bound_vs_hf"] = _bound(gen)
    gen["matmul_bound_vs_hf_avx2"] = _bound(res.get("generation_avx2") or {})
    full = _workload(gen, "ifeval_1280")
    timed = next(iter((full.get("engines") or {}).values()), None)
    if timed:
        share = IFEVAL_ROWS / full["prompts"]
        gen["ifeval_full_s"] = timed["wall_s"] * share
        gen["ifeval_full_extrapolated_from"] = None if full["prompts"] >= IFEVAL_ROWS else full["prompts"]


def render(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, where in (("generation", "this CPU"), ("generation_avx2", "AVX2-only CPU emulated")):
        gen = res.get(key)
        if gen and "error" not in gen:
            lines += render_generation(gen, where)
    gen = res.get("generation") or {}
    if gen.get("ifeval_full_s") is not None:
        sample = gen.get("ifeval_full_extrapolated_from")
        how = f"**extrapolated** from a fixed random sample of {sample} prompts" if sample else "measured"
        lines += [
            f"Full IFEval (541 prompts, 1280 new tokens), chosen engine: {fmt(gen['ifeval_full_s'], 0)} s ({how}).",
            "",
        ]
    return lines


def render_generation(gen: dict[str, Any], where: str) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in (gen.get("env") or {}).items())
    auto = gen.get("auto") or {}
    lines = [
        f"## Generation engines ({where})",
        "",
        f"Precision {gen.get('precision')} ({gen.get('dtype')}); greedy, stopped at the end of turn; "
        f"`hf` = today's path (`generate` in length-sorted left-padded batches of {gen.get('batch_size')}, "
        "static KV cache, weights stored in the compute dtype); `continuous` = continuous batching over a "
        "slotted KV cache (`ssr.generation.continuous`), its decode attention "
        f"**{gen.get('decode_attention', 'sdpa')}** (`ssr.generation.decode_attention`: the kernel built "
        "for this CPU where its probe is faster, else torch's SDPA); `continuous_sdpa` = the same with "
        "SDPA forced. Useful new tokens: up to and including the "
        "end of turn, never padding. `engine: auto` chose **"
        f"{auto.get('engine')}** ({auto.get('reason')}; probe {fmt(auto.get('probe_s'))} s).",
        "",
        "| workload | prompts | max new | engine | new tokens | wall s | tokens/s | vs hf | same ids as hf | ended |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if env:
        lines.insert(3, f"Environment: `{env}`.")
    for name, wl in (gen.get("workloads") or {}).items():
        hf = (wl["engines"].get("hf") or {}).get("tokens_per_s")
        for engine, v in wl["engines"].items():
            lines.append(
                f"| {name} | {wl['prompts']} | {wl['max_new_tokens']} | {engine} | {v['new_tokens']:,} | "
                f"{fmt(v['wall_s'])} | {fmt(v['tokens_per_s'])} | "
                f"{fmt(v['tokens_per_s'] / hf, 2) + 'x' if hf else 'n/a'} | "
                f"{fmt(100 * v['same_ids_as_hf'], 0) + '%' if 'same_ids_as_hf' in v else 'n/a'} | "
                f"{fmt(100 * v['ended'], 0)}% |"
            )
    lines.append("")
    for name, wl in (gen.get("workloads") or {}).items():
        hf = (wl["engines"].get("hf") or {}).get("tokens_per_s")
        if wl.get("matmul_bound") and hf:
            at = "; ".join(
                f"{b['rows']} rows {fmt(b['tokens_per_s'], 0)} tokens/s ({fmt(b['gflop_per_s'], 0)} GFLOP/s, "
                f"{fmt(b['tokens_per_s'] / hf, 2)}x hf)"
                for b in wl["matmul_bound"]
            )
            lines += [
                f"Ceiling ({name}): the decode step's matmuls alone (every layer's q/k/v, o, gate/up, down "
                f"and the LM head; torch's `F.linear` in the compute dtype), no attention, norms or Python: {at}.",
                "",
            ]
        fid = wl.get("fidelity_vs_hf_fp32")
        if fid:
            shares = ", ".join(
                f"{k} {fmt(100 * v, 0)}%" for k, v in fid.items() if isinstance(v, float) and k != "hf_fp32_s"
            )
            lines += [
                f"Fidelity ({name}): share of the first {fid['prompts']} prompts whose first "
                f"{fid['max_new_tokens']} greedy ids equal transformers' fp32 greedy `generate`: {shares}.",
                "",
            ]
    return lines


def targets(res: dict[str, Any]) -> list[Target]:
    gen = res.get("generation") or {}
    rows: list[Target] = []
    for key, where in (("speedup_vs_hf", "this CPU"), ("speedup_vs_hf_avx2", "AVX2-only CPU emulated")):
        sp = gen.get(key)
        rows.append(
            (
                f"generation >= {SPEEDUP:.0f}x today's hf path, IFEval at 256 new tokens ({where})",
                f"{sp:.2f}x" if sp else "n/a",
                status(None if sp is None else sp >= SPEEDUP),
            )
        )
    full = gen.get("ifeval_full_s")
    sample = gen.get("ifeval_full_extrapolated_from")
    rows.append(
        (
            "full IFEval (541 x 1280 new tokens) <= 8 min",
            "n/a"
            if full is None
            else f"{full:.0f} s" + (f" (extrapolated from {sample} prompts)" if sample else ""),
            status(None if full is None else full <= FULL_IFEVAL_S),
        )
    )
    return rows
