"""generator=hf (bf16 autocast as shipped, fp32) vs generator=openai server=llama_cpp, on the main
job's prompts: seconds, rows/s, answers identical to HF fp32, rule_qa accept rate; and whether the
server sees the same prompt tokens as transformers.

    nice -n 10 .venv/bin/python experiments/benchmarks/server_generation.py --rows 24 --max-new-tokens 64 \
        --out experiments/benchmarks/server_generation.json

Each contender generates into a fresh cache (nothing is reused). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import torch

from ssr.cli._hydra import load_records
from ssr.data.prompts import PromptConfig
from ssr.generation.config import DecodingConfig
from ssr.generation.hf import hf_generate
from ssr.generation.llama_server import LlamaCppServer
from ssr.judges.rule_qa import RuleQAJudge
from ssr.models.loading import EMBEDDED, ModelSpec, embedded_gguf_path, load_model, load_tokenizer
from ssr.runtime.hardware import cpu_isa
from ssr.selection.pipeline import (
    BaseModelGenerator,
    GeneratorConfig,
    StageCounters,
    answer_prompts,
    judge_candidates,
)


def records_and_prompts(rows: int, tokenizer) -> tuple[list, list[str], int]:
    """The main job's training rows (conf/train.yaml defaults) and its answer prompts."""
    from hydra import compose, initialize_config_dir

    from ssr.cli._hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train")
    records = load_records(cfg.data, "train", cfg.seed)[:rows]
    budget = int(cfg.data.max_length) - int(cfg.generator.decoding.max_new_tokens)
    prompt_cfg = PromptConfig(**{k: v for k, v in cfg.prompt.items()})
    return records, answer_prompts(tokenizer, records, prompt_cfg, budget), budget


def accept_rate(records, texts, cache_dir: Path) -> float:
    judge = RuleQAJudge(unanswerable_sentence=PromptConfig().unanswerable_sentence)
    verdicts = judge_candidates(judge, records, texts, cache_dir, StageCounters(), "judge")
    return sum(v.accept for v in verdicts) / len(verdicts)


def time_it(fn) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def token_check(server: LlamaCppServer, tokenizer, prompts: list[str]) -> dict[str, Any]:
    """Do the server and transformers see the same prompt token ids? (BOS, special tokens)."""
    same, counts = 0, 0
    for p in prompts:
        hf_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r = httpx.post(
            f"{server.base_url.removesuffix('/v1')}/extras/tokenize", json={"input": p}, timeout=60
        )
        server_ids = r.json()["tokens"]  # /extras/tokenize adds a BOS only if the GGUF asks for one
        same += server_ids == hf_ids
        c = httpx.post(
            f"{server.base_url}/completions",
            json={"prompt": p, "max_tokens": 1, "temperature": 0},
            timeout=120,
        ).json()
        counts += c["usage"]["prompt_tokens"] == len(hf_ids)
    return {
        "rows": len(prompts),
        "token_ids_identical": same,
        "completion_prompt_tokens_equal": counts,
        "first_ids_hf": tokenizer(prompts[0], add_special_tokens=False)["input_ids"][:6],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--configs", default="1x2,2x1", help="llama_cpp replicas x threads, comma separated")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    spec = ModelSpec(name_or_path=EMBEDDED)
    tokenizer = load_tokenizer(spec)
    records, prompts, budget = records_and_prompts(args.rows, tokenizer)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    hf_cfg = GeneratorConfig(decoding=decoding, max_prompt_tokens=budget)
    work = Path(tempfile.mkdtemp(prefix="ssr-servergen-bench-"))
    results: dict[str, dict[str, Any]] = {}

    # HF fp32: the model in fp32, no autocast (the reference)
    model, _ = load_model(spec)
    t0 = time.perf_counter()
    fp32 = hf_generate(
        model, tokenizer, prompts, decoding, hf_cfg.batch_size, autocast=False, progress=False,
        cache_implementation=hf_cfg.cache_implementation,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    del model
    results["hf fp32"] = {"texts": fp32, "seconds": secs}

    if not args.skip_bf16:  # HF as shipped: BaseModelGenerator (bf16 weights under bf16 autocast)
        gen = BaseModelGenerator(spec, hf_cfg, work / "hf_bf16")
        (texts, _), secs = time_it(lambda: gen.generate(prompts))
        gen.release()
        results["hf bf16 autocast"] = {"texts": texts, "seconds": secs}

    for conf in args.configs.split(","):
        replicas, threads = (int(x) for x in conf.split("x"))
        cfg = replace(
            hf_cfg, backend="openai", server="llama_cpp", max_concurrency=2,
            llama_cpp={"replicas": replicas, "n_threads": threads, "n_ctx": 2048},
        )  # fmt: skip
        with BaseModelGenerator(spec, cfg, work / f"llama_{conf}") as gen:
            (texts, _), secs = time_it(lambda gen=gen: gen.generate(prompts))
            mismatches = gen.server.prompt_token_mismatches
        results[f"openai llama_cpp {replicas} server(s) x {threads} thread(s)"] = {
            "texts": texts, "seconds": secs, "prompt_token_mismatches": mismatches,
        }  # fmt: skip

    # llama-cpp-python's request defaults (repeat_penalty 1.1, top_k 40, min_p 0.05) at temperature 0,
    # i.e. a client that sends only temperature=0: how far that is from plain greedy
    with LlamaCppServer(embedded_gguf_path(), n_ctx=2048, n_threads=1, log_dir=work) as server:
        tokens = token_check(server, tokenizer, prompts)
        stops = ["<|im_end|>"]

        def defaults() -> list[str]:
            out = []
            for p in prompts:
                body = {"prompt": p, "max_tokens": args.max_new_tokens, "temperature": 0, "stop": stops}
                r = httpx.post(f"{server.base_url}/completions", json=body, timeout=300)
                out.append(r.json()["choices"][0]["text"].strip())
            return out

        texts, secs = time_it(defaults)
        results["llama_cpp 1x1, server sampling defaults (repeat_penalty 1.1)"] = {
            "texts": texts,
            "seconds": secs,
        }

    ref = results["hf fp32"]["texts"]
    table = []
    for name, r in results.items():
        r["rows_per_s"] = len(prompts) / r["seconds"]
        r["identical_to_hf_fp32"] = sum(a == b for a, b in zip(r["texts"], ref)) / len(ref)
        r["rule_qa_accept"] = accept_rate(records, r["texts"], work / "verdicts" / re.sub(r"\W+", "_", name))
        table.append(
            f"| {name} | {r['seconds']:.1f} | {r['rows_per_s']:.2f} | {100 * r['identical_to_hf_fp32']:.0f}% "
            f"| {100 * r['rule_qa_accept']:.0f}% |"
        )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "flags": cpu_isa(),
        "cores": len(os.sched_getaffinity(0)),
        "loadavg_at_end": os.getloadavg(),
        "torch": torch.__version__,
    }
    print(f"machine: {json.dumps(machine)}")
    print(
        f"{len(prompts)} prompts (embedded grounded QA, main job rows), {args.max_new_tokens} new tokens, greedy"
    )
    print("| generator | seconds | rows/s | identical to HF fp32 | rule_qa accept |\n|---|---|---|---|---|")
    print("\n".join(table))
    print(f"prompt tokens: {json.dumps(tokens)}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "tokens": tokens, "results": results}, indent=1))


if __name__ == "__main__":
    main()
