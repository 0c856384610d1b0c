"""The whole ssr performance benchmark in one command; writes a markdown results table.

    python experiments/benchmarks/run_all.py --out experiments/benchmarks/RESULTS.md

Each section (``sections/``: pipeline, padding, train, levers, generation, judges, drift, e2e) is
one module with ``run``, ``render`` and ``targets`` (see ``harness.py``). Every task runs in its own
subprocess (its peak RSS is that process's ``ru_maxrss``, read with ``os.wait4``); training
contenders alternate round-robin (ssr, trl, hf, ssr, trl, hf, ...) and medians are reported, since
the machine may be shared. ``--quick`` runs a tiny random model through every path in a few minutes
(a smoke test of the harness, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import loadavg, shipped  # noqa: E402
from harness import EMBEDDED, REPO, Context, Runner, fmt, machine_info  # noqa: E402
from sections import drift, e2e, generation, judges, levers, padding, pipeline, train  # noqa: E402

SECTIONS = (pipeline, padding, train, levers, generation, judges, drift, e2e)

NOTES = [
    "Library changes measured here: (1) `SSRModule` stores the frozen base weights of every linear layer "
    "in bf16 when the Trainer runs `bf16-mixed` (`ssr.models.loading.cast_frozen_linear_weights`): autocast "
    "would cast them on every forward anyway, so matmuls are bit-identical (tested), the per-step "
    "weight copies disappear and the frozen linears take half the memory (~0.2 GB here); LoRA weights "
    "stay fp32. In training the speed gain is within noise (levers table: the copies are a few percent "
    "of a step). (2) The generator does the same for inference (`ssr.models.loading.cast_for_autocast_inference`, "
    "tied output head included), where autocast otherwise re-casts every weight at every decoding step, "
    "uses a static KV cache and batches 32 rows (`conf/generator/hf.yaml`); see the generation table. "
    "(3) `data.packing: true` (padding-free batches, position_ids restarting per row; loss and "
    "gradients equal to padded batches, tested with sdpa and eager attention).",
    "Levers that were already in place and are measured above: bf16 autocast (vs fp32), logits only at "
    "response positions (vs full-vocabulary logits everywhere), length-grouped batches (vs random "
    "batches: padding overhead table). Not adopted: padding-free packing on CPU (sdpa builds a "
    "block-diagonal mask over the whole pack, so attention costs grow with the pack length squared; "
    "slower than length-grouped padding), dropping the attention mask for right-padded batches "
    "(is_causal; no gain with the CPU flash-attention kernel), torch.compile (not in the default run: "
    "`--compile` times it; compiling on 2 cores takes minutes and the step is dominated by matmuls, "
    "attention and dropout RNG that compile does not remove).",
    "LoRA dropout (p=0.05 on all 7 adapted linears of 30 layers) draws a Bernoulli mask per adapter "
    "per step with the CPU's mt19937 generator; the profile line in the levers section shows its share. "
    "All three contenders pay it equally; `peft.lora_dropout: 0.0` (PEFT's own default) would remove it "
    "and its fp32 mask tensors, but it changes the regularisation, so the default stays 0.05.",
    "Gradient checkpointing is off for all three contenders (TRL's SFTConfig turns it on by default; ssr "
    "has it as `optim.gradient_checkpointing`). Most of the ~8 GB peak is activations (batch 8 x ~300 "
    "tokens x 30 layers, including LoRA dropout masks); checkpointing would cut it for any contender at "
    "the cost of recomputing the forward pass (not measured here).",
    "Generation: the prompt forward passes (~330 tokens per grounded prompt) are the same work one at a "
    "time or batched, and in a static batch every row keeps its slot until the longest row stops "
    "(rambling answers run to max_new_tokens=96 while most stop after 10-40 tokens). Both bound the "
    "batching speed-up below 5x here; continuous batching (the vllm generator on GPU) or a smaller "
    "max_new_tokens would move it, the latter at the cost of truncated own answers.",
    "Generation lever tried and dropped (2026-12-07, same machine, idle, 48 IFEval prompts x 256 new "
    "tokens, continuous engine with the kernel): prompt-lookup drafting (the tokens that followed the "
    "latest earlier occurrence of a request's last 3, else 2 tokens, prompt included; up to k drafted "
    "tokens per slot verified in the step's forward with a multi-row attention kernel; greedy output "
    "the same up to rounding: 46 of 48 prompts identical in fp32, 43 in bf16). 72% of drafted "
    "tokens were kept and decode steps fell 255 -> 194, but each step got costlier (76 -> 132 ms): bf16 339 -> 272 tokens/s (k=8) and 305 (k=4); AVX2-only "
    "emulation (fp32) 170 -> 152 (k=8). A CPU decode step at ~48 rows is compute-bound (see the "
    "ceiling line), so a verified row costs nearly a decoded one; drafting pays where decoding is "
    "memory-bound (a GPU at small batch), which is not measured here.",
    "On GPU: bf16 applies (GPU model configs load bf16 weights, then there is nothing to precast); "
    "SDPA dispatches to flash / memory-efficient kernels; padding-free packing becomes exact "
    "variable-length attention with `model.attn_implementation=flash_attention_2` (transformers "
    "reads the restarting position_ids), so it removes padding compute instead of adding attention "
    "work; response-only logits and length grouping apply unchanged; dropout RNG is cheap (Philox). "
    "None of this was measured here (no GPU on this machine).",
]


def render(res: dict[str, Any]) -> str:
    o = res["options"]
    m = res["machine"]
    lines = [
        "# ssr performance benchmark",
        "",
        f"Generated by `{res['command']}` on {res['started']} ({fmt(res['elapsed_s'] / 60)} min).",
        "",
        *(
            [
                f"Sections **{', '.join(res['reused']['sections'])}** are reused from the run of "
                f"{res['reused']['started']} (`{res['reused']['command']}`), same machine; the rest "
                "was measured by this command.",
                "",
            ]
            if res.get("reused")
            else []
        ),
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} logical cores, {m['memory_gib']} GiB RAM |",
        f"| ISA (`/proc/cpuinfo` flags) | {', '.join(m.get('isa') or []) or 'n/a'} |",
        f"| `precision: auto` chose | {(res.get('precision') or {}).get('auto_choice')}: "
        f"{(res.get('precision') or {}).get('reason')} |",
        f"| torch threads | {res.get('torch_threads')} |",
        f"| Python | {m['python']} ({m['platform']}) |",
        "| Versions | " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + " |",
        f"| Load average (1/5/15 min) | start {res['load_start']}, end {res['load_end']} |",
        f"| bf16 matmul peak (measured) | {fmt(res['peak_bf16'] / 1e9)} GFLOP/s "
        f"(fp32 {fmt(res['peak_fp32'] / 1e9)}); start/end runs: "
        + ", ".join(fmt(x / 1e9, 0) for x in res["peak_bf16_runs"])
        + " |",
        "",
        f"Model: `{o['model']}` (fp32 weights; {(res.get('precision') or {}).get('auto_choice')} as "
        f"`precision: auto` chose, unless a row says otherwise), {train.setting()}, batch size "
        f"{o['batch_size']}, grad clip 1.0. Data: real SQuAD-2.0 rows "
        "(`$SSR_DATA_ROOT/squad_v2/dev-v2.0.json`, balanced answerable/unanswerable) whose grounded "
        "prompt is 250-400 tokens, gold answers as targets.",
        "",
        "The machine is shared: other jobs were running (see load averages; 2 cores). Contenders run "
        "alternately, each in its own process; tables give medians over rounds, and CPU-time "
        "throughput (tokens per CPU-second of the process), which contention disturbs less than wall time.",
        "",
    ]
    lines += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in res.get("targets", [])] + [""]
    for section in SECTIONS:
        lines += section.render(res)
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", default=None, help="raw results (default: next to --out, .json)")
    p.add_argument("--work", default=None, help="scratch dir for logs/runs (default: a temp dir)")
    p.add_argument("--model", default=EMBEDDED)
    p.add_argument(
        "--precision",
        default="auto",
        help="auto: measured now (a busy machine can measure bf16 slower than it is); or a Lightning precision",
    )
    p.add_argument("--rounds", type=int, default=2, help="training rounds (contenders alternate)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lever-rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile in the levers")
    p.add_argument("--gen-prompts", type=int, default=None, help="default: the main job's training rows")
    p.add_argument("--gen-max-new", type=int, default=None, help="default: the main job's max_new_tokens")
    p.add_argument("--gen-data", default="embedded", help="embedded (the main job's rows) or squad")
    p.add_argument(
        "--pipeline",
        default="main_job,main_job_avx2",
        help=f"main-job variants to run: {', '.join(pipeline.VARIANTS)}",
    )
    p.add_argument(
        "--gen-avx2-prompts",
        type=int,
        default=None,
        help="IFEval prompts of the emulated-AVX2 generation section (default: --gen-ifeval-prompts)",
    )
    p.add_argument("--gen-ifeval-prompts", type=int, default=64, help="IFEval prompts at 256 new tokens")
    p.add_argument(
        "--gen-full-prompts",
        type=int,
        default=541,
        help="IFEval prompts at 1280 new tokens (fewer: extrapolated)",
    )
    p.add_argument(
        "--gen-fidelity-prompts", type=int, default=16, help="prompts also generated in fp32 by transformers"
    )
    p.add_argument("--judge-items", type=int, default=32)
    p.add_argument("--e2e-rows", type=int, default=32)
    p.add_argument("--e2e-epochs", type=int, default=2)
    p.add_argument("--e2e-rounds", type=int, default=1)
    p.add_argument("--epoch-rows", type=int, default=256, help="rows per epoch of the default squad config")
    p.add_argument(
        "--drift-fraction",
        type=float,
        default=1.0,
        help="run the local suite on this share of its docs and scale the time (default: the full suite)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list: pipeline,train,levers,padding,generation,generation_avx2,judges,drift,e2e",
    )
    p.add_argument(
        "--reuse",
        default=None,
        help="results JSON of an earlier run: the sections named in --skip are taken from it (the report says so)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="per sub-process, seconds")
    p.add_argument(
        "--quick", action="store_true", help="tiny random model, minimal sizes (harness smoke test)"
    )
    p.add_argument("--render-only", default=None, help="re-render --out from a saved results JSON")
    opts = p.parse_args()
    if opts.render_only:
        res = json.loads(Path(opts.render_only).read_text())
        res["notes"] = NOTES
        Path(opts.out).write_text(render(res) + "\n")
        return
    if opts.quick:
        opts.model = "tiny-random"
        opts.rounds, opts.train_steps, opts.batch_size, opts.lever_rounds = 1, 1, 2, 1
        opts.gen_prompts, opts.gen_max_new = 4, 8
        opts.gen_ifeval_prompts, opts.gen_full_prompts, opts.gen_fidelity_prompts = 4, 2, 2
        opts.judge_items, opts.e2e_rows, opts.e2e_epochs = 4, 8, 1
        opts.epoch_rows, opts.drift_fraction = 32, 0.02
    skip = opts.skip_set = {s for s in opts.skip.split(",") if s}
    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix="ssr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, opts.timeout)
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "options": vars(opts),
        "machine": machine_info(),
        "load_start": loadavg(),
        "work_dir": str(work),
        "notes": NOTES,
    }
    if opts.reuse:
        prev = json.loads(Path(opts.reuse).read_text())
        keys = {"train": "train_runs"}  # section name -> results key, where they differ
        reused = [name for name in sorted(skip) if keys.get(name, name) in prev]
        for name in reused:
            res[keys.get(name, name)] = prev[keys.get(name, name)]
        res["reused"] = {"sections": reused, "started": prev.get("started"), "command": prev.get("command")}
    runner.say(f"work dir: {work}\n")
    from ssr.runtime.precision import resolve

    choice = resolve(opts.precision, "cpu", use_cache=False)  # auto: measured now, on this machine
    res["precision"] = {"auto_choice": choice.precision, **choice.to_dict()}
    opts.train_precision = choice.precision
    runner.say(choice.describe() + "\n")
    main_job = main_job_sizes()
    opts.gen_prompts = opts.gen_prompts or main_job["rows"]
    opts.gen_max_new = opts.gen_max_new or main_job["max_new_tokens"]
    base = {"model": opts.model, "precision": choice.precision}
    ctx = Context(opts, runner, base)
    mm = [runner.task("matmul", {"n": 1024 if opts.quick else 4096})]
    res["torch_threads"] = mm[0].get("threads")
    for section in SECTIONS:
        if section.NAME not in skip or section.NAME == "generation":  # generation reads its two keys
            section.run(ctx, res)
    mm.append(runner.task("matmul", {"n": 1024 if opts.quick else 4096}))

    ok_mm = [x for x in mm if "error" not in x]
    res["peak_bf16_runs"] = [x["bf16_flops_per_s"] for x in ok_mm]
    res["peak_bf16"] = max(res["peak_bf16_runs"]) if ok_mm else float("nan")
    res["peak_fp32"] = max(x["fp32_flops_per_s"] for x in ok_mm) if ok_mm else float("nan")
    res["machine"]["fp32_matmul_gflops"] = round(res["peak_fp32"] / 1e9, 1)
    res["machine"]["bf16_matmul_gflops"] = round(res["peak_bf16"] / 1e9, 1)
    for section in SECTIONS:
        if hasattr(section, "finish"):
            section.finish(res)
    res["load_end"] = loadavg()
    res["elapsed_s"] = time.perf_counter() - t_start
    res["targets"] = [row for section in SECTIONS for row in section.targets(res)]
    json_path = Path(opts.json) if opts.json else Path(opts.out).with_suffix(".json")
    json_path.write_text(json.dumps(res, indent=1, default=str))  # first: --render-only can redo the rest
    Path(opts.out).write_text(render(res) + "\n")
    runner.say(f"wrote {opts.out} and {json_path} in {res['elapsed_s'] / 60:.1f} min\n")


def main_job_sizes() -> dict[str, int]:
    """Rows and max_new_tokens of the README main job, read from its composed config."""
    cfg = shipped()
    return {
        "rows": int(cfg.data.max_train_rows),
        "max_new_tokens": int(cfg.generator.decoding.max_new_tokens),
    }


if __name__ == "__main__":
    main()
