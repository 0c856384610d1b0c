"""The repo's `conf/hydra` group: run/sweep dirs and the submitit launcher configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

APPS_DIR = Path(__file__).resolve().parent / "apps"
PROBE_APP = APPS_DIR / "slurm_probe.py"
REPO_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _hydra_cfg(monkeypatch: pytest.MonkeyPatch, *overrides: str):
    monkeypatch.setenv("SSR_CONF_DIR", str(REPO_CONF_DIR))
    with initialize_config_dir(config_dir=str(APPS_DIR / "slurm_probe_conf"), version_base="1.3"):
        cfg = compose(config_name="probe", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra


def test_slurm_launcher_runs_one_task_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SSR_SLURM_PARTITION", "SSR_SLURM_ACCOUNT", "SSR_SLURM_QOS"):
        monkeypatch.delenv(var, raising=False)
    launcher = _hydra_cfg(monkeypatch, "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4").launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4
    assert launcher.timeout_min == 240
    assert launcher.partition is None and launcher.account is None and launcher.qos is None
    assert launcher.submitit_folder.startswith("multirun/slurm_probe/")
    assert launcher.submitit_folder.endswith("/.submitit/%j")


def test_slurm_launcher_reads_partition_and_account_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSR_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("SSR_SLURM_ACCOUNT", "proj42")
    launcher = _hydra_cfg(monkeypatch, "hydra/launcher=slurm").launcher
    assert (launcher.partition, launcher.account) == ("gpu-a100", "proj42")


def test_local_launcher_and_run_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    hydra_cfg = _hydra_cfg(monkeypatch, "hydra/launcher=local", "experiment_name=exp1")
    assert hydra_cfg.launcher._target_.endswith("LocalLauncher")
    assert hydra_cfg.run.dir.startswith("outputs/exp1/")
    assert hydra_cfg.sweep.dir.startswith("multirun/exp1/")
    assert OmegaConf.to_container(hydra_cfg.sweep)["subdir"] == "${hydra.job.num}"


@pytest.mark.slow
def test_multirun_through_local_launcher(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "hydra/launcher=local",
        f"hydra.sweep.dir={sweep_dir}",
        "x=1,2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    results = sorted(
        (json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")), key=lambda r: r["x"]
    )
    assert [(r["job_num"], r["x_squared"], r["slurm_job_id"]) for r in results] == [
        (0, 1, None),
        (1, 4, None),
    ]
