"""DDP on CPU (gloo, 2 processes) through the real `ssr-train` CLI equals a one-process run.

Lightning starts rank 1 by re-running the command with `hydra.run.dir=<rank 0's dir>`; each rank
generates and judges its half of the rows in `setup`; every rank reads `selection.jsonl`; the drift
callback's evaluation is shared: each rank computes its half, rank 0 writes the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runs import adapter_shapes, jsonl_rows, run_train, summary


@pytest.mark.slow
def test_ddp_on_cpu_matches_one_process(tmp_path: Path) -> None:
    # threshold 0: own answers win where answerable; 2 generation batches of 8: one for each rank
    common = ("method=ssr", "judge.threshold=0.0", "generator.batch_size=8")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_train(*common, f"hydra.run.dir={single}", f"paths.cache_dir={tmp_path / 'cache1'}", cwd=tmp_path)
    run_train(
        *common,
        "trainer=ddp",
        "eval.callback.enabled=true",  # self-drift only (no suite, no task metrics)
        "eval/suite=none",
        "eval.tasks.in_domain=false",
        "eval.self_drift={enabled: true, limit: 4, max_new_tokens: 8, batch_size: 4, cache: false}",
        "eval.callback.cache_base=false",  # the base computed here by both ranks, never read from SSR_CACHE
        f"hydra.run.dir={ddp}",
        f"paths.cache_dir={tmp_path / 'cache2'}",
        cwd=tmp_path,
    )

    # both ranks ran in one Hydra run dir: rank 1's job log sits next to rank 0's, nothing elsewhere
    assert (ddp / "train.log").is_file() and (ddp / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache1", "cache2", "ddp", "single"]

    # the same targets, chosen once
    assert (ddp / "selection.jsonl").read_bytes() == (single / "selection.jsonl").read_bytes()
    sources = summary(ddp)["selection"]["counts"]
    assert sources.get("self", 0) > 0 and sources.get("gold", 0) > 0, sources
    generations = list((tmp_path / "cache2" / "generations").glob("*.jsonl"))
    assert len(generations) == 1 and len(jsonl_rows(generations[0])) == 16, "no row generated twice"
    assert sorted(json.loads(row)["rank"] for row in jsonl_rows(generations[0])) == [0] * 8 + [1] * 8
    assert summary(ddp)["selection"]["extra"]["stages"]["generate_self"]["computed_by_rank"] == [8, 8]

    # drift: the base model and after the epoch, each rank scoring 2 of the 4 self-drift prompts
    drift = json.loads((ddp / "drift.json").read_text())
    assert drift["base"]["stage"] == "base" and [r["epoch"] for r in drift["epochs"]] == [0]
    for record in (drift["base"], *drift["epochs"]):
        ranks = record["ranks"]
        assert (ranks["world_size"], ranks["mode"], ranks["items"]["self_drift"]) == (2, "split", [2, 2])
        assert all(min(counts) > 0 for counts in ranks["items"].values()), ranks  # kl_task, ifeval too

    # the same adapter; each rank took half of the 4 batches per step
    assert adapter_shapes(ddp) == adapter_shapes(single)
    assert (summary(single)["global_step"], summary(ddp)["global_step"]) == (4, 2)
    assert summary(ddp)["train_rows"] == 16


def test_local_ddp_inside_a_multirun_stops_with_a_clear_message(tmp_path: Path) -> None:
    """Lightning would re-run `ssr-train -m ...` for rank 1, starting the sweep again."""
    import subprocess

    from cli_runs import cli_env, train_cmd

    cmd = train_cmd(
        "-m",
        "trainer=ddp",
        "method=ssr",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.cache_dir={tmp_path}",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not work inside a Hydra multirun" in proc.stderr + proc.stdout
    assert not (tmp_path / "generations").exists(), "stopped before generating"
