"""Jobs on the real local SLURM cluster: plain sbatch/srun, and a Hydra multirun through
`hydra/launcher=slurm` (hydra-submitit-launcher)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from slurm_fixtures import SlurmCluster

pytest_plugins = ["slurm_fixtures"]  # the session-scoped `slurm_cluster` fixture
pytestmark = pytest.mark.slurm

PROBE_APP = Path(__file__).resolve().parent / "apps" / "slurm_probe.py"


def _sbatch(cluster: SlurmCluster, cwd: Path, *args: str) -> str:
    proc = cluster.run(["sbatch", "--parsable", *args], cwd=cwd)
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}\n{cluster.daemon_logs()}"
    return proc.stdout.strip().split(";")[0]


def test_sbatch_job_completes_and_writes_output(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = _sbatch(
        slurm_cluster, tmp_path, "-o", "job-%j.out", "--wrap", "echo job=$SLURM_JOB_ID on $(hostname)"
    )
    assert slurm_cluster.wait_for_job(job_id) == ("COMPLETED", "0:0")
    output = (tmp_path / f"job-{job_id}.out").read_text()
    assert output.strip() == f"job={job_id} on {slurm_cluster.node}"


def test_failing_sbatch_job_is_reported(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = _sbatch(slurm_cluster, tmp_path, "-o", "/dev/null", "--wrap", "exit 3")
    assert slurm_cluster.wait_for_job(job_id) == ("FAILED", "3:0")


def test_srun_runs_one_process_per_task(slurm_cluster: SlurmCluster) -> None:
    proc = slurm_cluster.run(["srun", "--ntasks=2", "bash", "-c", "echo $SLURM_PROCID"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["0", "1"]


def test_hydra_multirun_through_slurm_launcher(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "hydra/launcher=slurm",
        *slurm_cluster.cpu_launcher_overrides,
        f"hydra.sweep.dir={sweep_dir}",
        "x=1,2",
    ]
    try:
        proc = slurm_cluster.run(cmd, timeout_s=240, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        slurm_cluster.cancel_all()
        logs = "\n".join(f"== {p}\n{p.read_text()}" for p in sorted(sweep_dir.rglob("*_log.*")))
        pytest.fail(f"multirun did not finish in 240 s\n{logs}\n{slurm_cluster.daemon_logs()}")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"

    results = sorted(
        (json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")), key=lambda r: r["x"]
    )
    assert [(r["job_num"], r["x"], r["x_squared"]) for r in results] == [(0, 1, 1), (1, 2, 4)]
    assert all(r["slurm_job_id"] and r["slurm_ntasks"] == "1" for r in results)
    assert len({r["slurm_job_id"] for r in results}) == 2, "each sweep point is its own SLURM job"

    submitit_dir = sweep_dir / ".submitit"
    assert len(list(submitit_dir.glob("*/*_submission.sh"))) == 1, "one array submission"
    assert len(list(submitit_dir.glob("*_*/*_0_log.out"))) == 2
    assert len(list(submitit_dir.glob("*_*/*_0_result.pkl"))) == 2


def test_ssr_train_sweep_through_slurm_launcher(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The real tiny `ssr-train` config as a 2-job SLURM array: both jobs leave their results."""
    from cli_runs import adapter_shapes, cli_env, summary, train_cmd

    sweep = tmp_path / "sweep"
    cmd = train_cmd(
        "-m",
        "hydra/launcher=slurm",
        *slurm_cluster.cpu_launcher_overrides,
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "method=sft,ssr",
    )
    env = cli_env(SLURM_CONF=str(slurm_cluster.conf))
    try:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        slurm_cluster.cancel_all()
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(sweep.rglob("*_log.*")))
        pytest.fail(f"sweep did not finish in 600 s\n{logs}\n{slurm_cluster.daemon_logs()}")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    results = {summary(sweep / str(k))["method"]: sweep / str(k) for k in (0, 1)}
    assert set(results) == {"sft", "ssr"}
    for method, run in results.items():
        assert summary(run)["global_step"] == 4, method
        assert (run / "adapter" / "adapter_config.json").is_file()
        assert (run / "selection.jsonl").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert adapter_shapes(results["sft"]) == adapter_shapes(results["ssr"])
    assert summary(results["ssr"])["selection"]["extra"]["stages"]["generate_self"]["rows"] == 16
    submitit_dir = sweep / ".submitit"
    assert len(list(submitit_dir.glob("*/*_submission.sh"))) == 1, "one array submission"
    assert len(list(submitit_dir.glob("*_*/*_0_result.pkl"))) == 2, "both array tasks returned"
