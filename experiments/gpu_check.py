"""The prepared GPU check: the CUDA paths of ssr on one GPU, within 8 minutes, in one report.

    bash experiments/gpu_check.sh                       # -> experiments/results/gpu_check/REPORT.{json,md}
    bash experiments/gpu_check.sh --parts peak,train --out /tmp/check

Each part runs in its own process under its own time limit (the limits add up to under 8 minutes);
a part that fails or runs out of time is reported with its error, and the next part runs:

| part       | runs                                                              | reports                  |
|------------|-------------------------------------------------------------------|--------------------------|
| peak       | an 8192^3 bf16 matmul, timed with CUDA events                     | the bf16 peak (MFU's denominator) |
| train      | ``ssr-train`` (the README main job) with ``trainer=gpu``, bf16-mixed LoRA: own answers, judge, selection, the training steps, the drift evaluation of the base and after the epoch | tokens/s, MFU, peak memory, stage times |
| trl        | TRL's SFTTrainer on the same rows and targets (the train part's ``selection.jsonl``), the same LoRA, batch, lr, steps and bf16 | tokens/s, MFU, peak memory |
| zero2      | DeepSpeed ZeRO-2: ``tests/test_deepspeed.py::test_zero2_trains_a_step_on_cuda`` | passed / failed / skipped |
| generation | the in-process engines ``hf`` and ``continuous`` (and vLLM where installed) on the main job's own-answer prompts | new tokens/s, peak memory |

Model: the embedded SmolLM2-135M-Instruct where this machine has it; else (``--model random``, or
``auto`` without it) a random model of its exact shape built from a config (the same FLOPs and
memory; a random model never stops early, so every answer runs to ``max_new_tokens``). Tokens are
real (non-padding) tokens; throughput is timed after the first optimizer step; MFU = the model
FLOPs of ``experiments/benchmarks/steps.py``'s formula per second / the measured bf16 peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
EXIT_NO_CUDA = 3
NO_CUDA = (
    "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing was run. "
    "Run it on a machine with a CUDA GPU and the gpu extra (pip install -e '.[gpu]')."
)
# seconds per part: together under 8 minutes
LIMITS = {"peak": 40, "train": 180, "trl": 80, "zero2": 70, "generation": 100}
# SmolLM2-135M-Instruct's shape (its config.json), for the random stand-in
SMOLLM2_135M_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
}
# --cpu-smoke: every part's code on CPU with a tiny model and sizes (a check of this script, not of CUDA)
SMOKE_OVERRIDES = [
    "data.max_train_rows=16",
    "data.max_val_rows=4",
    "generator.decoding.max_new_tokens=8",
    "eval/suite=none",
    "eval.tasks.in_domain=false",
    "eval.ifeval.enabled=false",
    "eval.self_drift={enabled: true, limit: 2, max_new_tokens: 4, batch_size: 2}",
]


# -- the parent: one process per part, the report -------------------------------------------------


def model_overrides(choice: str, smoke: bool) -> tuple[list[str], str]:
    """The ``ssr-train`` overrides of the model, and what the report calls it."""
    if smoke:
        return ["model=tiny_random"], "tiny random Llama (CPU smoke run)"
    if choice == "auto":
        choice = "embedded" if _embedded_model_available() else "random"
    if choice == "embedded":
        return [], "SmolLM2-135M-Instruct (embedded)"
    shape = ",".join(f"{k}:{v}" for k, v in SMOLLM2_135M_SHAPE.items())
    return (
        ["model=tiny_random", f"model.tiny_config={{{shape}}}"],
        "random weights in SmolLM2-135M-Instruct's shape (the embedded model is not on this machine)",
    )


def _embedded_model_available() -> bool:
    sys.path.insert(0, str(REPO / "src"))
    try:
        from ssr.models.loading import EMBEDDED, resolve_path

        return (Path(resolve_path(EMBEDDED)) / "config.json").is_file()
    except Exception:  # not installed, not converted: the random stand-in
        return False


def child_env() -> dict[str, str]:
    paths = [str(REPO / "src"), str(EXPERIMENTS), str(EXPERIMENTS / "benchmarks")]
    extra = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, *([extra] if extra else [])]),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_part(name: str, limit: float, out: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Run one part in its own process group; kill the group at ``limit`` seconds."""
    result = out / f"{name}.json"
    result.unlink(missing_ok=True)
    log_path = out / f"{name}.log"
    cmd = [
        sys.executable,
        __file__,
        "--part",
        name,
        "--result",
        str(result),
        "--context",
        json.dumps(context),
    ]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = round(time.perf_counter() - t0, 1)
    tail = log_path.read_text(errors="replace")[-3000:]
    if rc is None:
        return {"status": "timeout", "seconds": seconds, "limit_s": limit, "log_tail": tail}
    if rc != 0 or not result.is_file():
        return {"status": "failed", "seconds": seconds, "exit_code": rc, "log_tail": tail}
    data = json.loads(result.read_text())
    status = "skipped" if "skipped" in data else data.pop("status", "ok")
    return {"status": status, "seconds": seconds, "limit_s": limit, **data}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for package in ("transformers", "lightning", "peft", "deepspeed", "trl", "vllm", "lm_eval"):
        try:
            from importlib.metadata import version

            info[package] = version(package.replace("_", "-"))
        except Exception:
            info[package] = None
    return info


def with_mfu(report: dict[str, Any]) -> None:
    """MFU of each training part against the measured bf16 peak."""
    peak = report["parts"].get("peak", {}).get("bf16_flops_per_s")
    for name in ("train", "trl"):
        part = report["parts"].get(name, {})
        if peak and part.get("model_flops_per_s"):
            part["mfu"] = round(part["model_flops_per_s"] / peak, 4)


def _gib(value: Any) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, int | float) and value else ""


def _error_line(log_tail: str) -> str:
    """The last line of a log that names an error (else its last line)."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["(no output)"])[-1]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# GPU check",
        "",
        f"{m['device']} ({m.get('memory_gib', '?')} GiB), torch {m['torch']} (CUDA {m['cuda']}), "
        f"transformers {m['transformers']}, lightning {m['lightning']}, deepspeed {m['deepspeed']}, "
        f"trl {m['trl']}, vllm {m['vllm']}. Model: {report['model']}. "
        f"Written by `bash experiments/gpu_check.sh` on {report['finished']}.",
        "",
        "| part | status | seconds | tokens/s | MFU | peak memory GiB | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in report["parts"].items():
        rate = part.get("tokens_per_s")
        mfu = part.get("mfu")
        notes = part.get("skipped") or part.get("note") or ""
        if part["status"] in ("failed", "timeout"):
            notes = f"`{_error_line(part.get('log_tail') or '')[:200]}`"
        if name == "peak" and part.get("bf16_flops_per_s"):
            notes = f"bf16 matmul {part['bf16_flops_per_s'] / 1e12:.1f} TFLOP/s (n={part['n']})"
        lines.append(
            f"| {name} | {part['status']} | {part['seconds']} | {f'{rate:.0f}' if rate else ''} | "
            f"{f'{100 * mfu:.1f}%' if mfu else ''} | {_gib(part.get('peak_memory_bytes'))} | {notes} |"
        )
    for name, part in report["parts"].items():
        if name == "generation" and part["status"] == "ok":
            lines += ["", "Generation engines:", ""]
            for engine, row in part["engines"].items():
                desc = row.get("skipped") or (
                    f"{row['tokens_per_s']:.0f} new tokens/s ({row['new_tokens']} tokens, "
                    f"{row['seconds']:.2f} s, peak {_gib(row['peak_memory_bytes'])} GiB)"
                )
                lines.append(f"- {engine}: {desc}")
        if name == "train" and part["status"] == "ok":
            lines += ["", f"ssr-train stages (s): `{json.dumps(part['stages'])}`; drift: {part['drift']}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with_mfu(report)
    (out / "REPORT.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "REPORT.md").write_text(markdown(report))


def orchestrate(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(NO_CUDA, file=sys.stderr)
        return EXIT_NO_CUDA
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(LIMITS))
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; choose from {list(LIMITS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    overrides, model = model_overrides(args.model, args.cpu_smoke)
    context = {
        "out": str(args.out),
        "overrides": overrides + (SMOKE_OVERRIDES if args.cpu_smoke else []),
        "device": "cpu" if args.cpu_smoke else "cuda",
    }
    report: dict[str, Any] = {"machine": machine(), "model": model, "context": context, "parts": {}}
    for name in parts:
        limit = LIMITS[name] * (10 if args.cpu_smoke else 1)
        print(f"gpu_check: {name} (limit {limit} s)", flush=True)
        report["parts"][name] = run_part(name, limit, args.out, context)
        print(f"gpu_check: {name} {report['parts'][name]['status']}", flush=True)
        write_report(args.out, report)
    print((args.out / "REPORT.md").read_text())
    return 0


# -- the parts (each in its own process) ----------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory(device: str, reset: bool = False) -> int:
    import torch

    if device != "cuda":
        return 0
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated()


def part_peak(ctx: dict[str, Any]) -> dict[str, Any]:
    """bf16 matmul FLOP/s on n x n matrices: the mean of 20 products after 3 warm-ups."""
    import torch

    device = ctx["device"]
    n, repeats = (8192, 20) if device == "cuda" else (1024, 3)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"n": n, "repeats": repeats, "bf16_flops_per_s": 2 * n**3 * repeats / seconds}


def _composed(ctx: dict[str, Any]) -> Any:
    """The main job's config with this check's overrides (as ``ssr-train`` composes it)."""
    from common import shipped
    from omegaconf import open_dict

    cfg = shipped(*ctx["overrides"])
    with open_dict(cfg):  # no Hydra run here: the run dir ${hydra:...} would name
        cfg.paths.output_dir = str(Path(ctx["out"]) / "composed")
    return cfg


def part_train(ctx: dict[str, Any]) -> dict[str, Any]:
    """The README main job through ``ssr-train`` on the GPU, bf16-mixed LoRA, with the step meter."""
    run_dir = Path(ctx["out"]) / "train"
    trainer = ["trainer=gpu", "trainer.precision=bf16-mixed"] if ctx["device"] == "cuda" else ["trainer=cpu"]
    cmd = [
        sys.executable,
        "-m",
        "ssr.cli.train",
        *trainer,
        *ctx["overrides"],
        f"hydra.run.dir={run_dir}",
        "+callbacks.gpu_meter._target_=gpu_check_meter.TrainMeter",
        f"+callbacks.gpu_meter.out={run_dir / 'meter.json'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (Path(ctx["out"]) / "train_ssr-train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ssr-train exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    meter = json.loads((run_dir / "meter.json").read_text())
    drift = json.loads((run_dir / "drift.json").read_text()) if (run_dir / "drift.json").is_file() else {}
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": round(wall, 1),
        "precision": summary.get("precision"),
        "generation_engine": summary.get("generation_engine"),
        "global_step": summary.get("global_step"),
        "train_rows": summary.get("train_rows"),
        "stages": summary.get("stages"),
        "drift": {"base": "base" in drift, "epochs": len(drift.get("epochs", []))},
        "tokens_per_s": meter.get("tokens_per_s"),
        "model_flops_per_s": meter.get("flops_per_s"),
        "timed_steps": meter.get("steps"),
        "peak_memory_bytes": meter.get("train_peak_memory_bytes"),
        "before_train_peak_memory_bytes": meter.get("before_train_peak_memory_bytes"),
        "run_peak_memory_bytes": meter.get("run_peak_memory_bytes"),
        "meter": meter,
    }


def part_trl(ctx: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer on the train part's rows and targets, with the main job's LoRA and settings."""
    if importlib.util.find_spec("trl") is None:
        return {"skipped": "trl is not installed (pip install -e '.[gpu]')"}
    import math

    from train_contenders import prompt_completions, sft_trainer_run

    from ssr.cli._hydra import build
    from ssr.models.loading import load_model
    from ssr.selection.methods import trained
    from ssr.selection.pipeline import read_selection

    cfg = _composed(ctx)
    dm = build(cfg.data)
    selection = Path(ctx["out"]) / "train" / "selection.jsonl"
    by_id = {r.id: r for r in dm.train_records}
    if selection.is_file():
        rows = [(by_id[s.id], s.target) for s in trained(read_selection(selection))]
        targets = "the train part's selection.jsonl"
    else:
        rows, targets = [(r, r.gold) for r in dm.train_records], "gold (the train part wrote no selection)"
    model, tok = load_model(dm.spec)
    batch = int(cfg.data.batch_size)
    steps = math.ceil(len(rows) / batch) * int(cfg.trainer.max_epochs)
    args = {"batch_size": batch, "warmup": 1, "steps": steps - 1, "device": ctx["device"]}
    args["precision"] = "bf16-mixed" if ctx["device"] == "cuda" else "32-true"
    lora = {k: v for k, v in cfg.peft.items() if not str(k).startswith("_")}
    _peak_memory(ctx["device"], reset=True)
    data = prompt_completions(rows, dm.prompt)
    summary = sft_trainer_run(model, tok, data, args, lora, int(cfg.data.max_length))
    return {
        "rows": len(rows),
        "targets": targets,
        "steps": steps,
        "tokens_per_s": summary["tokens_per_s"],
        "model_flops_per_s": summary.get("flops_per_s"),
        "peak_memory_bytes": _peak_memory(ctx["device"]),
        "note": f"{len(rows)} rows, {targets}",
        "summary": summary,
    }


def part_zero2(ctx: dict[str, Any]) -> dict[str, Any]:
    """The repository's CUDA ZeRO-2 test: one ``ssr-train`` with ``trainer=deepspeed_zero2``."""
    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed is not installed (pip install -e '.[gpu]')"}
    test = "tests/test_deepspeed.py::test_zero2_trains_a_step_on_cuda"
    cmd = [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    (Path(ctx["out"]) / "zero2_pytest.log").write_text(output)
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if " skipped" in last and proc.returncode == 0:
        return {"skipped": f"{test}: {last}"}
    if proc.returncode != 0:
        raise RuntimeError(f"{test} failed: {output[-2000:]}")
    return {"note": f"{test}: {last}"}


def _until_stop(ids: list[int], stops: set[int]) -> int:
    """New tokens up to and including the first stop token (the hf engine pads after it)."""
    for i, token in enumerate(ids):
        if token in stops:
            return i + 1
    return len(ids)


def part_generation(ctx: dict[str, Any]) -> dict[str, Any]:
    """Own answers to the main job's prompts with each in-process engine (and vLLM if installed)."""
    import tempfile

    import torch

    from ssr.cli._hydra import build
    from ssr.generation.engine import generate_ids
    from ssr.generation.hf import prompt_token_ids
    from ssr.generation.vllm import load_vllm, vllm_generate
    from ssr.models.loading import TINY_RANDOM, cast_for_autocast_inference, load_model, resolve_path
    from ssr.selection.pipeline import answer_prompts

    device = ctx["device"]
    dm = build(_composed(ctx).data)
    gen = dm.generator_cfg
    prompts = answer_prompts(dm.tokenizer, dm.train_records, dm.prompt, gen.max_prompt_tokens)
    ids = prompt_token_ids(dm.tokenizer, prompts)
    model, tok = load_model(dm.spec)
    model.to(device)
    dtype = torch.bfloat16 if device == "cuda" else None
    if dtype is not None:
        cast_for_autocast_inference(model, dtype)
    kwargs = {**gen.decoding.hf_kwargs(), "eos_token_id": [tok.eos_token_id]}
    engines: dict[str, Any] = {}
    for engine in ("hf", "continuous"):
        generate_ids(model, ids[:4], tok.pad_token_id, kwargs, gen.batch_size, dtype, engine=engine)
        _peak_memory(device, reset=True)
        _sync(device)
        t0 = time.perf_counter()
        new = generate_ids(model, ids, tok.pad_token_id, kwargs, gen.batch_size, dtype, engine=engine)
        _sync(device)
        seconds = time.perf_counter() - t0
        tokens = sum(_until_stop(row, {tok.eos_token_id}) for row in new)
        engines[engine] = {
            "rows": len(ids),
            "new_tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "peak_memory_bytes": _peak_memory(device),
        }
    if importlib.util.find_spec("vllm") is None:
        engines["vllm"] = {"skipped": "vllm is not installed (the vllm extra pins its own torch)"}
    elif device != "cuda":
        engines["vllm"] = {"skipped": "vLLM runs on GPUs only"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = tmp
            if dm.spec.name_or_path == TINY_RANDOM:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            else:
                path = resolve_path(dm.spec.name_or_path)
            del model
            torch.cuda.empty_cache()
            llm = load_vllm(path, gpu_memory_utilization=0.4, dtype="bfloat16")
            vllm_generate(llm, tok, prompts[:4], gen.decoding, progress=False)
            t0 = time.perf_counter()
            texts = vllm_generate(llm, tok, prompts, gen.decoding, progress=False)
            seconds = time.perf_counter() - t0
            tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
            engines["vllm"] = {
                "rows": len(prompts),
                "new_tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "peak_memory_bytes": None,
                "note": "new tokens counted by re-tokenizing the texts; memory: vLLM preallocates 40%",
            }
    best = max((e for e in engines.values() if "tokens_per_s" in e), key=lambda e: e["tokens_per_s"])
    return {
        "engines": engines,
        "tokens_per_s": best["tokens_per_s"],
        "peak_memory_bytes": best.get("peak_memory_bytes"),
        "note": f"{len(ids)} prompts, max {gen.decoding.max_new_tokens} new tokens; tokens/s: the fastest engine",
    }


PARTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "peak": part_peak,
    "train": part_train,
    "trl": part_trl,
    "zero2": part_zero2,
    "generation": part_generation,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "gpu_check")
    parser.add_argument("--parts", default=",".join(LIMITS), help=f"comma-separated, of {list(LIMITS)}")
    parser.add_argument("--model", choices=["auto", "embedded", "random"], default="auto")
    parser.add_argument("--cpu-smoke", action="store_true", help="check this script on CPU (tiny model)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a child process: run this one part
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--context", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        result = PARTS[args.part](json.loads(args.context))
        args.result.write_text(json.dumps(result, indent=1, default=str))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
