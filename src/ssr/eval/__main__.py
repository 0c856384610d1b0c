"""Evaluate a model on a suite (+ self-drift) from the command line; prints a Markdown table.

    python -m ssr.eval --suite conf/eval/suite/local.yaml --out base.json
    python -m ssr.eval --suite conf/eval/suite/local.yaml --hub-mirror ssr_arc_easy,ssr_piqa --no-self-drift

``--hub-mirror`` also runs lm-eval's own hub definitions of those tasks on the same offline docs
(:mod:`ssr.eval.hub_mirror`), named by their hub names, for a faithfulness comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml

from ssr.eval.evaluate import SELF_DRIFT_KEY, evaluate_model
from ssr.eval.hub_mirror import hub_task_config
from ssr.eval.suite import SuiteConfig, limit_for, sample_counts
from ssr.models import EMBEDDED, ModelSpec, load_model


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ssr.eval", description=__doc__.split("\n")[0])
    p.add_argument("--suite", required=True, help="suite YAML (conf/eval/suite/*.yaml)")
    p.add_argument("--model", default=EMBEDDED, help="hub id, local dir or embedded:smollm2-135m-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--limits", default=None, help="JSON number or object overriding the suite's limits")
    p.add_argument(
        "--hub-mirror", default="", help="comma-separated ssr_* tasks to also run via lm-eval's hub YAML"
    )
    p.add_argument("--mixed-precision", default="auto")
    p.add_argument("--no-self-drift", action="store_true")
    p.add_argument("--out", default=None, help="write scores + settings as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    suite = SuiteConfig.from_mapping(yaml.safe_load(Path(args.suite).read_text()))
    if args.limits is not None:
        suite.limits = json.loads(args.limits)
    mirrors = [t for t in args.hub_mirror.split(",") if t]
    mirror_cfgs = [hub_task_config(t) for t in mirrors]
    if isinstance(suite.limits, dict):  # a mirror evaluates the same docs as its ssr_* task
        suite.limits = dict(suite.limits)
        for ssr_task, cfg in zip(mirrors, mirror_cfgs):
            suite.limits.setdefault(cfg["task"], limit_for(ssr_task, {}, suite.limits))
    tasks = [*suite.tasks, *mirror_cfgs]
    suite.tasks = tasks
    model, tokenizer = load_model(ModelSpec(name_or_path=args.model, dtype=args.dtype))
    counts = sample_counts(tasks, suite.limits)
    start = time.perf_counter()
    scores = evaluate_model(
        model, tokenizer, suite, None if args.no_self_drift else {}, mixed_precision=args.mixed_precision
    )
    seconds = time.perf_counter() - start
    print("| task | n | metric | value |\n|---|---|---|---|")
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            print(
                f"| {task} | {counts.get(task, '' if task == SELF_DRIFT_KEY else 'group')} | {metric} | {value:.4f} |"
            )
    print(
        f"\n{seconds:.0f} s on {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})"
    )
    result = {
        "scores": scores,
        "n": counts,
        "seconds": seconds,
        "model": args.model,
        "suite": args.suite,
        "limits": suite.limits,
        "hub_mirror": mirrors,
        "mixed_precision": args.mixed_precision,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
