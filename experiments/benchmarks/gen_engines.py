"""The ``generation`` benchmark task: every in-process engine on the same prompts, in one process.

Workloads (``args["workloads"]``): ``own_answers`` (the main job's own training rows, its grounded
prompt, its ``max_new_tokens``) and ``ifeval`` (IFEval prompts from ``$SSR_DATA_ROOT/ifeval``, a
fixed random sample, chat template applied) at the given ``max_new_tokens``. Engines
(``args["engines"]``): ``hf`` is today's path as the generator ships it (``generate_ids`` engine
``hf``: length-sorted left-padded batches of ``GeneratorConfig.batch_size``, static KV cache,
weights stored once in the autocast dtype); ``continuous`` the continuous-batching engine; both in
the precision ``auto`` chose (``args["precision"]``). Greedy, stopped at the end of turn.

Per engine: useful new tokens (up to and including the stop token; never padding), wall seconds,
tokens/s, and fidelity: the share of prompts whose ids equal those of ``hf`` at the same precision,
and (on ``fidelity_prompts`` prompts) those of transformers' fp32 greedy ``generate``. Per workload
timed with ``hf``: the ceiling its matmuls alone set (:func:`matmul_bound`).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any
from unittest import mock

IFEVAL_SEED = 0
# the continuous engine with torch's SDPA for its decode attention (not the kernel ``auto`` may pick)
SDPA_VARIANT = "continuous_sdpa"
# the matmul-only ceiling is also measured at this many rows (a wide batch of a long workload)
BOUND_ROWS = 128


def _useful(ids: list[int], stops: set[int]) -> list[int]:
    cut = next((k for k, t in enumerate(ids) if t in stops), None)
    return ids if cut is None else ids[: cut + 1]


def ifeval_prompts(tok: Any, n: int | None) -> list[str]:
    """``n`` IFEval prompts (a fixed random sample, file order; all when ``n`` is None), chat template applied."""
    from ssr.runtime.paths import data_root

    rows = [json.loads(line) for line in (Path(data_root()) / "ifeval" / "input_data.jsonl").open()]
    if n is not None and n < len(rows):
        rows = [rows[i] for i in sorted(random.Random(IFEVAL_SEED).sample(range(len(rows)), n))]
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]


def _generation_records(args: dict[str, Any], tok: Any) -> list:
    """The main job's own training rows (as its config samples them)."""
    from ssr.data.adapters import embedded_grounded_qa, subsample
    from ssr.data.prompts import DEFAULT_UNANSWERABLE

    rows = embedded_grounded_qa(split="train", unanswerable_sentence=DEFAULT_UNANSWERABLE)
    return subsample(rows, max_rows=args["prompts"], balance=True, seed=args.get("seed", 0))


def _prompts(workload: dict[str, Any], tok: Any) -> list[str]:
    if workload["data"] == "ifeval":
        return ifeval_prompts(tok, workload.get("prompts"))
    from ssr.data.prompts import PromptConfig
    from ssr.selection.pipeline import answer_prompts

    records = _generation_records({"prompts": workload["prompts"]}, tok)
    return answer_prompts(tok, records, PromptConfig())


def _attention_used(model: Any, dtype: Any) -> str:
    """What the continuous engine's decode steps use here for this model: ``kernel`` or ``sdpa``."""
    import torch

    from ssr.generation.continuous import attention_shape, causal_lm
    from ssr.generation.decode_attention import decode_attention, sdpa

    fn = decode_attention("cpu", *attention_shape(causal_lm(model).config), dtype or torch.float32)
    return "sdpa" if fn is sdpa else "kernel"


def matmul_bound(model: Any, dtype: Any, rows: int, reps: int = 20) -> dict[str, float]:
    """The decode step's matmuls alone at ``rows`` rows: q/k/v, o, gate/up and down of every layer
    and the LM head, in the compute dtype, as the continuous engine lays its weights out. No exact
    engine built on torch's matmuls decodes faster at that batch: attention, norms, sampling and
    Python are left out."""
    import torch
    import torch.nn.functional as F

    from ssr.generation.continuous import LlamaRunner

    runner = LlamaRunner(model, dtype or torch.float32)
    weights = [w for layer in runner.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    weights.append(runner.lm_head)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]).to(w.dtype) for w in weights}

    def step() -> None:
        for w in weights:
            F.linear(inputs[w.shape[1]], w)

    with torch.inference_mode():
        step()  # oneDNN's kernels for these shapes are built on first use
        step()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        seconds = (time.perf_counter() - t0) / reps
    flops = 2 * rows * sum(w.numel() for w in weights)
    return {
        "rows": rows,
        "step_ms": 1000 * seconds,
        "tokens_per_s": rows / seconds,
        "gflop_per_s": flops / seconds / 1e9,
    }


def run_generation_engines(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ssr.generation.config import GeneratorConfig
    from ssr.generation.decode_attention import ENV
    from ssr.generation.engine import MIN_SLOTS, generate_ids, resolve_engine
    from ssr.generation.hf import prompt_token_ids
    from ssr.models.loading import ModelSpec, cast_for_autocast_inference, load_model
    from ssr.runtime.precision import autocast_dtype

    spec = ModelSpec(name_or_path=args["model"])
    fp32_model, tok = load_model(spec)
    fp32_model.eval()
    dtype = autocast_dtype(args["precision"])
    model = fp32_model
    if dtype is not None:  # as BaseModelGenerator runs it
        model, _ = load_model(spec)
        cast_for_autocast_inference(model.eval(), dtype)
    shipped = GeneratorConfig()
    stops = {tok.eos_token_id}
    t0 = time.perf_counter()
    auto = resolve_engine("auto", model, dtype, tok.pad_token_id, use_cache=False)
    out: dict[str, Any] = {
        "precision": args["precision"],
        "dtype": str(dtype or torch.float32),
        "auto": {**auto.to_dict(), "probe_s": time.perf_counter() - t0},
        "batch_size": shipped.batch_size,
        "decode_attention": _attention_used(model, dtype),
        "workloads": {},
    }

    def run(
        engine: str, m: Any, ids: list[list[int]], max_new: int, dt: Any
    ) -> tuple[list[list[int]], float]:
        kwargs = {"max_new_tokens": max_new, "do_sample": False, "eos_token_id": sorted(stops)}
        kwargs.update(temperature=None, top_p=None, top_k=None)
        if engine == "hf":
            kwargs["cache_implementation"] = shipped.cache_implementation
        variant = engine == SDPA_VARIANT
        t = time.perf_counter()
        # the setting is part of the attention resolution's cache key: nothing cached needs clearing
        with mock.patch.dict(os.environ, {ENV: "sdpa"} if variant else {}):
            new = generate_ids(
                m,
                ids,
                tok.pad_token_id,
                kwargs,
                shipped.batch_size,
                dt,
                engine="continuous" if variant else engine,
            )
        return [_useful(r, stops) for r in new], time.perf_counter() - t

    for wl in args["workloads"]:
        prompts = _prompts(wl, tok)
        ids = prompt_token_ids(tok, prompts)
        rec: dict[str, Any] = {**wl, "prompts": len(ids), "prompt_tokens": sum(map(len, ids)), "engines": {}}
        outputs: dict[str, list[list[int]]] = {}
        for name in wl["engines"]:
            engine = auto.engine if name == "chosen" else name
            new, wall = run(engine, model, ids, wl["max_new_tokens"], dtype)
            outputs[engine] = new
            n = sum(map(len, new))
            rec["engines"][engine] = {
                "wall_s": wall,
                "new_tokens": n,
                "tokens_per_s": n / wall,
                "ended": sum(1 for r in new if r and r[-1] in stops) / len(new),
            }
        for engine, new in outputs.items():
            if "hf" in outputs:
                same = sum(a == b for a, b in zip(new, outputs["hf"], strict=True)) / len(new)
                rec["engines"][engine]["same_ids_as_hf"] = same
        k = min(wl.get("fidelity_prompts", 0), len(ids))
        if k:  # vs transformers' fp32 greedy, on the first k prompts at a short length
            sub, max_new = ids[:k], wl.get("fidelity_max_new_tokens", 64)
            ref, ref_s = run("hf", fp32_model, sub, max_new, None)
            rec["fidelity_vs_hf_fp32"] = {"prompts": k, "max_new_tokens": max_new, "hf_fp32_s": ref_s}
            for engine in rec["engines"]:
                got, _ = run(engine, model, sub, max_new, dtype)
                rec["fidelity_vs_hf_fp32"][engine] = sum(a == b for a, b in zip(got, ref, strict=True)) / k
            got, _ = run("continuous", fp32_model, sub, max_new, None)
            rec["fidelity_vs_hf_fp32"]["continuous_fp32"] = (
                sum(a == b for a, b in zip(got, ref, strict=True)) / k
            )
        if "hf" in rec["engines"]:  # the ceiling at this workload's widest batch, and at BOUND_ROWS
            widest = min(len(ids), max(shipped.batch_size, MIN_SLOTS))
            rec["matmul_bound"] = [matmul_bound(model, dtype, r) for r in sorted({widest, BOUND_ROWS})]
        out["workloads"][wl["name"]] = rec
    return out
