"""The `pipeline` section: the README's main job itself, timed from its own records.

Runs ``ssr-train`` with the shipped defaults (exactly what ``SSR_DATA_ROOT=../shared/data
.venv/bin/ssr-train`` runs) on a fresh run directory and an empty cache (only the converted model is
kept: its one-off GGUF conversion is not part of the job), and reads the per-stage seconds from the
run's ``summary.json``. Optional variants: forced fp32 (``trainer.precision=32-true``) and an
AVX2-only CPU emulated by capping oneDNN and MKL at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``: bf16 matmuls then take the reference path, as on CPUs without
AVX512-BF16, and ``precision: auto`` must see it).
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import AVX2_ENV, Context, Target, child_env, fmt, run_child, status

NAME = "pipeline"
MAIN_JOB_S = 300  # target: the README main job, end to end (setup and GGUF conversion excluded)
VARIANTS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "main_job": ({}, [], "the README main job on this machine (precision auto)"),
    "main_job_fp32": ({}, ["trainer.precision=32-true"], "same, fp32 forced"),
    "main_job_avx2": (AVX2_ENV, [], "same, AVX2-only CPU emulated (oneDNN/MKL capped at AVX2)"),
}
STAGES = ("generate", "judge", "base_eval", "train", "eval", "task_metrics", "fit", "total", "process")


def fresh_cache(root: Path, models: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    return root


def run(ctx: Context, res: dict[str, Any]) -> None:
    if not ctx.opts.quick:
        res["pipeline"] = run_pipeline(ctx.runner, [v for v in ctx.opts.pipeline.split(",") if v])


def finish(res: dict[str, Any]) -> None:
    main = (res.get("pipeline") or {}).get("main_job") or {}
    if main:
        res["pipeline"]["main_job"]["wall_s"] = round(main["wall_s"], 1)
    res["agreement"] = agreement(res)


def render(res: dict[str, Any]) -> list[str]:
    return render_pipeline(res)


def targets(res: dict[str, Any]) -> list[Target]:
    rows = []
    for job in (res.get("pipeline") or {}).values():
        total = job["wall_s"] if job.get("rc") == 0 else None
        rows.append(
            (
                f"{job['label']} <= {MAIN_JOB_S} s end to end",
                f"{total:.0f} s (precision {(job.get('precision') or {}).get('precision')})"
                if total
                else "failed",
                status(total is not None and total <= MAIN_JOB_S),
            )
        )
    return rows


def run_pipeline(runner: Any, variants: list[str]) -> dict[str, Any]:
    """Each variant once: wall seconds seen from outside and the run's own stage records."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
    from ssr.runtime.paths import cache_root

    models = cache_root() / "models"
    out: dict[str, Any] = {}
    for name in variants:
        env, overrides, label = VARIANTS[name]
        run_dir = runner.work / f"pipeline_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cache = fresh_cache(runner.work / f"pipeline_{name}_cache", models)
        cmd = [sys.executable, "-m", "ssr.cli.train", f"hydra.run.dir={run_dir}", *overrides]
        runner.say(f"[{time.strftime('%H:%M:%S')}] pipeline {name} ... ")
        proc = run_child(
            cmd,
            runner.work / f"pipeline_{name}.log",
            child_env({"SSR_CACHE": str(cache), **env}),
            runner.timeout,
        )
        record: dict[str, Any] = {
            **proc,
            "label": label,
            "env": env,
            "overrides": overrides,
            "cmd": " ".join(["ssr-train", *cmd[3:]]),
        }
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            record.update(
                stages=summary.get("stages"),
                precision=summary.get("precision"),
                selection=(summary.get("selection") or {}).get("by_source"),
                train_rows=summary.get("train_rows"),
                global_step=summary.get("global_step"),
                train_tokens_per_s=_mean_metric(run_dir / "metrics.csv", "train/tokens_per_s"),
                drift=_drift_seconds(run_dir / "drift.json"),
            )
        out[name] = record
        runner.say(f"rc {proc['rc']}, {proc['wall_s']:.0f}s\n")
    return out


def _mean_metric(path: Path, key: str) -> float | None:
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        values = [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]
    return statistics.mean(values[1:] or values) if values else None  # the first step warms up


def _drift_seconds(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    drift = json.loads(path.read_text())
    return {
        "base": (drift.get("base") or {}).get("seconds"),
        "epochs": [e.get("seconds") for e in drift.get("epochs", [])],
    }


def flat_stages(stages: dict[str, Any]) -> dict[str, float]:
    """One number per stage: the epochs' train / eval seconds summed."""
    epochs = stages.get("epochs") or []
    flat = {k: float(stages.get(k) or 0.0) for k in STAGES if k not in ("train", "eval")}
    flat["train"] = sum(e["train"] for e in epochs)
    flat["eval"] = sum(e["eval"] for e in epochs)
    return flat


def agreement(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Micro-benchmark predictions of the main job's stages vs what the main job recorded."""
    job = (res.get("pipeline") or {}).get("main_job") or {}
    stages = job.get("stages")
    if not stages:
        return []
    rows: list[dict[str, Any]] = []
    gen = res.get("generation") or {}
    own = ((gen.get("workloads") or {}).get("own_answers")) or {}
    default = (own.get("engines") or {}).get((gen.get("auto") or {}).get("engine") or "", {})
    if default.get("wall_s") and own.get("prompts") and job.get("train_rows"):
        rows.append(
            _row(
                "generate (own answers)",
                default["wall_s"] / own["prompts"] * job["train_rows"],
                stages["generate"],
                "rows x seconds per row of the generation section's chosen engine",
            )
        )
    drift = res.get("drift") or {}
    epochs = (job.get("drift") or {}).get("epochs") or []
    if drift.get("epoch_eval_s") and epochs:
        rows.append(
            _row(
                "per-epoch drift eval: suite + self-drift",
                drift["epoch_eval_s"],
                statistics.mean(e["drift"] for e in epochs),
                "the drift section's second evaluation in one process (tasks built, reference made), "
                "same suite limits and self-drift settings",
            )
        )
    tr = ((res.get("train") or {}).get("summary") or {}).get("ssr") or {}
    if tr.get("tokens_per_s") and job.get("train_tokens_per_s"):
        rows.append(
            _row(
                "training tokens/s",
                tr["tokens_per_s"],
                job["train_tokens_per_s"],
                "ssr contender (SQuAD rows, 250-400 prompt tokens) vs the main job's own rows",
            )
        )
    return rows


def _row(stage: str, micro: float, real: float, how: str) -> dict[str, Any]:
    ratio = micro / real if real else float("nan")
    return {
        "stage": stage,
        "micro": micro,
        "pipeline": real,
        "ratio": ratio,
        "agrees": abs(ratio - 1) <= 0.2,
        "how": how,
    }


def render_pipeline(res: dict[str, Any]) -> list[str]:
    pipe = res.get("pipeline") or {}
    if not pipe:
        return []
    lines = [
        "## Pipeline: the README main job",
        "",
        "`ssr-train` with the shipped defaults on a fresh run directory and an empty cache (the converted "
        "GGUF kept; `setup.sh` and the one-off conversion excluded). Stage seconds come from the run's "
        "own `summary.json` (`stages`): generate and judge from the selection stats, base / epoch "
        "evaluation from `drift.json`, train = each epoch's training + validation, fit = all of "
        "`trainer.fit`, total = `train()`, process = since the interpreter started (imports included); "
        "wall = the process as timed from outside.",
        "",
        "| run | precision (chosen) | wall s | " + " | ".join(STAGES) + " |",
        "|---|---|---|" + "---|" * len(STAGES),
    ]
    for name, job in pipe.items():
        if not job.get("stages"):
            lines.append(f"| {job.get('label', name)} | n/a | {fmt(job['wall_s'], 0)} (rc {job['rc']}) |")
            continue
        flat = flat_stages(job["stages"])
        prec = job.get("precision") or {}
        lines.append(
            f"| {job['label']} | {prec.get('precision')} | {fmt(job['wall_s'], 0)} | "
            + " | ".join(fmt(flat[k], 1) for k in STAGES)
            + " |"
        )
    lines.append("")
    for job in pipe.values():
        prec = job.get("precision") or {}
        if prec:
            figures = ", ".join(
                f"{d}: " + "/".join(f"{v:.0f}" for v in shapes.values())
                for d, shapes in (prec.get("gflops") or {}).items()
            )
            lines.append(
                f"- `{job['cmd']}`{' with ' + ' '.join(f'{k}={v}' for k, v in job['env'].items()) if job['env'] else ''}: "
                f"{prec.get('reason')}{' (probe GFLOP/s ' + figures + ')' if figures else ''}; "
                f"{job.get('train_rows')} rows, {job.get('global_step')} steps, selection {job.get('selection')}."
            )
    rows = res.get("agreement") or []
    if rows:
        lines += [
            "",
            "Micro-sections vs the real run (they must agree within 20%, or the row says why):",
            "",
            "| stage | micro-benchmark | main job | ratio | within 20% | how |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['stage']} | {fmt(r['micro'])} | {fmt(r['pipeline'])} | {r['ratio']:.2f} | "
                f"{'yes' if r['agrees'] else '**no**'} | {r['how']} |"
            )
    lines.append("")
    return lines
