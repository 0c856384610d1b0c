"""End to end: ssr-train method=sft, then method=ssr on an empty generation/verdict cache, then cached."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from harness import EMBEDDED, REPO, Context, Runner, Target, child_env, fmt, med, run_child, status

NAME = "e2e"
FIRST = 1.3  # target: ssr first run <= 1.3x sft
CACHED = 1.05  # target: ssr cached re-run <= 1.05x sft


def run(ctx: Context, res: dict[str, Any]) -> None:
    res["e2e"] = run_e2e(ctx.runner, ctx.opts)


def run_e2e(runner: Runner, opts: argparse.Namespace) -> dict[str, Any]:
    """ssr-train method=sft, then method=ssr on an empty generation/verdict cache, then ssr cached."""
    sys.path.insert(0, str(REPO / "src"))
    from ssr.runtime.paths import cache_root

    real_models = cache_root() / "models"
    cache = runner.work / "e2e_cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(real_models, target_is_directory=True)  # keep the converted model
    model_override = ["model=tiny_random"] if opts.model != EMBEDDED else []
    common = [
        "data=squad_v2",
        f"data.max_train_rows={opts.e2e_rows}",
        "data.max_val_rows=0",
        f"trainer.max_epochs={opts.e2e_epochs}",
        "trainer.enable_progress_bar=false",
        f"generator.decoding.max_new_tokens={opts.gen_max_new}",
        "experiment_name=bench",
        "eval.callback.enabled=false",  # drift evaluation is timed on its own (drift section)
        *model_override,
    ]
    runs: dict[str, Any] = {}
    order = [("sft", "sft"), ("ssr_first", "ssr"), ("ssr_cached", "ssr")]
    for rnd in range(opts.e2e_rounds):
        for name, method in order:
            if name == "ssr_first" and rnd > 0:  # a fresh cache again, the converted model kept
                for sub in ("generations", "verdicts"):
                    shutil.rmtree(cache / sub, ignore_errors=True)
            run_dir = runner.work / f"e2e_{name}_{rnd}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "ssr.cli.train",
                f"method={method}",
                *common,
                f"hydra.run.dir={run_dir}",
            ]
            runner.say(f"[{time.strftime('%H:%M:%S')}] e2e {name} ... ")
            proc = run_child(
                cmd,
                runner.work / f"e2e_{name}_{rnd}.log",
                child_env({"SSR_CACHE": str(cache)}),
                runner.timeout,
            )
            summary_path = run_dir / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            stages = ((summary.get("selection") or {}).get("extra") or {}).get("stages")
            runs.setdefault(name, []).append(
                {
                    **proc,
                    "stages": stages,
                    "global_step": summary.get("global_step"),
                    "cmd": " ".join(cmd[1:]),
                }
            )
            runner.say(f"rc {proc['rc']}, {proc['wall_s']:.0f}s\n")
    return runs


def render(res: dict[str, Any]) -> list[str]:
    o = res["options"]
    lines: list[str] = []
    e2e = res.get("e2e")
    if e2e:
        lines += [
            "## End to end: ssr-train method=ssr vs method=sft",
            "",
            f"`python -m ssr.cli.train data=squad_v2 data.max_train_rows={o['e2e_rows']} data.max_val_rows=0 "
            f"trainer.max_epochs={o['e2e_epochs']} generator.decoding.max_new_tokens={o['gen_max_new']} "
            "eval.callback.enabled=false` (default model, LoRA, judge rule_qa, generator hf: batch 32, "
            "static KV cache; the drift evaluation is off here and timed in its own section). "
            "SSR_CACHE: a fresh directory "
            "whose `models/` links to the converted model; 'first' starts with no generations/verdicts, "
            "'cached' re-runs with them. Wall time of the whole process (imports, model loads, "
            "generation, judging, training, checkpoints).",
            "",
            "| run | wall s (median) | vs sft | all rounds (s) | stages (generation/judge, s) | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        sft = med([r["wall_s"] for r in e2e.get("sft", []) if r["rc"] == 0])
        for name in ("sft", "ssr_first", "ssr_cached"):
            runs = e2e.get(name, [])
            ok = [r for r in runs if r["rc"] == 0]
            w = med([r["wall_s"] for r in ok])
            stages = "; ".join(
                f"{k} {v['computed']} computed/{v['cached']} cached {v['seconds']}s"
                for k, v in ((ok[-1].get("stages") or {}) if ok else {}).items()
            )
            fails = "" if len(ok) == len(runs) else f" ({len(runs) - len(ok)} failed)"
            lines.append(
                f"| {name}{fails} | {fmt(w)} | {fmt(w / sft, 2)}x | {', '.join(fmt(r['wall_s']) for r in runs)} | "
                f"{stages or '-'} | {fmt(med([r['maxrss_mib'] for r in ok]), 0)} |"
            )
        lines.append("")
    return lines


def targets(res: dict[str, Any]) -> list[Target]:
    rows = []
    e2e = res.get("e2e") or {}
    sft = med([x["wall_s"] for x in e2e.get("sft", []) if x["rc"] == 0])
    for key, name, target in (("ssr_first", "first run", FIRST), ("ssr_cached", "cached re-run", CACHED)):
        w = med([x["wall_s"] for x in e2e.get(key, []) if x["rc"] == 0])
        if w == w and sft == sft:
            rows.append(
                (
                    f"e2e ssr {name} <= {target}x sft",
                    f"{w / sft:.2f}x ({w:.0f} s vs {sft:.0f} s)",
                    status(w / sft <= target),
                )
            )
        else:
            rows.append((f"e2e ssr {name} <= {target}x sft", "n/a", status(None)))
    return rows
