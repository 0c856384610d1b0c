"""Hydra multirun sweeps of the real `ssr-train`: one directory and one W&B run per job, one W&B group
per sweep, and generation/judging shared through the caches so no row is computed twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_runs import adapter_shapes, jsonl_rows, run_train, summary


def _jobs(sweep: Path) -> dict[tuple[str, ...], Path]:
    """Job directories keyed by their swept overrides (method=..., seed=...)."""
    jobs = {}
    for path in sweep.glob("*/.hydra/overrides.yaml"):
        swept = [o for o in yaml.safe_load(path.read_text()) if o.startswith(("method=", "seed="))]
        jobs[tuple(sorted(swept))] = path.parent.parent
    return jobs


def _cache_rows(cache: Path, stage: str) -> list[str]:
    files = list((cache / stage).glob("*.jsonl"))
    assert len(files) == 1, files
    keys = [json.loads(line)["key"] for line in jsonl_rows(files[0])]
    assert len(keys) == len(set(keys)), f"a {stage} row was written twice"
    return keys


def _computed(jobs, stage: str) -> int:
    return sum(
        (summary(d)["selection"]["extra"].get("stages") or {}).get(stage, {}).get("computed", 0)
        for d in jobs.values()
    )


def test_sweep_with_basic_launcher_shares_caches_and_groups_wandb_runs(tmp_path: Path) -> None:
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    run_train(
        "-m",
        "method=sft,ssr",
        "seed=1,2",
        "logger=wandb",
        "experiment_name=sweep_test",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache}",
        cwd=tmp_path,
        timeout_s=900,
    )
    jobs = _jobs(sweep)
    assert set(jobs) == {
        ("method=sft", "seed=1"),
        ("method=sft", "seed=2"),
        ("method=ssr", "seed=1"),
        ("method=ssr", "seed=2"),
    }
    assert sorted(d.name for d in jobs.values()) == ["0", "1", "2", "3"]
    shapes = {key: adapter_shapes(d) for key, d in jobs.items()}
    assert len({json.dumps(sorted(s.items())) for s in shapes.values()}) == 1, "same adapter layout"
    for (method, seed), d in jobs.items():
        s = summary(d)
        assert (f"method={s['method']}", f"seed={s['seed']}") == (method, seed)
        assert s["global_step"] == 4

    # every row the sweep needed was generated and judged exactly once
    generated, judged = _cache_rows(cache, "generations"), _cache_rows(cache, "verdicts")
    assert _computed(jobs, "generate_self") == len(generated) >= 16
    assert _computed(jobs, "judge_self") == len(judged) == len(generated)

    # one W&B run per job, all in the sweep's group
    groups = set()
    for d in jobs.values():
        (offline,) = (d / "wandb").glob("offline-run-*")
        groups.add(_run_group(next(offline.glob("run-*.wandb"))))
    assert len(groups) == 1 and groups.pop().startswith("sweep_test-"), "one W&B group per sweep"


def _run_group(wandb_file: Path) -> str:
    from test_wandb import _records

    # the sweep process has exited, so W&B's files are complete
    return next(r.run.run_group for r in _records(wandb_file) if r.WhichOneof("record_type") == "run")


@pytest.mark.slow
def test_parallel_sweep_with_local_launcher_generates_each_row_once(tmp_path: Path) -> None:
    """submitit runs both jobs at once; `stage_lock` makes the second wait and read the first's rows."""
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    run_train(
        "-m",
        "hydra/launcher=local",
        "method=ssr,s3ft",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache}",
        cwd=tmp_path,
        timeout_s=900,
    )
    jobs = _jobs(sweep)
    assert set(jobs) == {("method=ssr",), ("method=s3ft",)}
    own = [summary(d)["selection"]["extra"]["stages"]["generate_self"] for d in jobs.values()]
    assert sorted((c["computed"], c["cached"]) for c in own) == [(0, 16), (16, 0)]
    generated = _cache_rows(cache, "generations")
    assert len(generated) == 16 + 16, "own answers once + s3ft's rewrites"
    assert _computed(jobs, "generate_self") + _computed(jobs, "generate_rewrite") == len(generated)
    assert _computed(jobs, "judge_self") == 16
    assert all((d / "adapter" / "adapter_model.safetensors").is_file() for d in jobs.values())
