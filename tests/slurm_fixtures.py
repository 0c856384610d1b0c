"""Reusable pytest fixture for the real single-node SLURM cluster of `.ci/slurm/`.

Use it from any test module in tests/ with::

    pytest_plugins = ["slurm_fixtures"]  # provides the session-scoped `slurm_cluster` fixture

or wrap `local_slurm_cluster()` (a context manager) in a fixture of your own. It starts the cluster (`.ci/slurm/start.sh`) when it is not up and stops it at the end
of the session if it started it. Without SLURM installed it skips, except under CI (`CI=true`),
where it installs the packages (`.ci/slurm/install.sh`) so the tests run rather than skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO_ROOT / ".ci" / "slurm"
SLURM_DIR = Path(os.environ.get("SSR_SLURM_DIR", "/tmp/ssr-slurm"))
SLURM_CONF = SLURM_DIR / "slurm.conf"

# Overrides that fit `hydra/launcher=slurm` (written for GPU nodes) onto the local CPU-only node.
CPU_NODE_LAUNCHER_OVERRIDES = (
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class SlurmCluster:
    """Handle on the running local cluster: its config, logs and an environment for subprocesses."""

    conf: Path
    log_dir: Path
    node: str
    cpu_launcher_overrides: tuple[str, ...] = field(default=CPU_NODE_LAUNCHER_OVERRIDES)

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ plus SLURM_CONF pointing at this cluster (and any `extra` variables)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, args: Sequence[str], timeout_s: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run a command against this cluster, capturing text output."""
        return subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=timeout_s, **kwargs
        )

    def wait_for_job(self, job_id: str, timeout_s: float = 120) -> tuple[str, str]:
        """Poll until the job leaves the queue; return its final (JobState, ExitCode).

        Faster than `sbatch --wait`, whose polling backs off to 10 s."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.run(["scontrol", "-o", "show", "job", job_id], timeout_s=30).stdout
            fields = dict(kv.split("=", 1) for kv in info.split() if "=" in kv)
            state = fields.get("JobState", "UNKNOWN")
            if state not in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "UNKNOWN"}:
                return state, fields.get("ExitCode", "")
            if time.monotonic() > deadline:
                self.run(["scancel", job_id], timeout_s=30)
                raise TimeoutError(f"job {job_id} still {state} after {timeout_s} s\n{self.daemon_logs()}")
            time.sleep(0.2)

    def cancel_all(self) -> None:
        """Cancel every job of the current user (used when a test times out)."""
        self.run(["scancel", "--full", f"--user={os.getuid()}"], timeout_s=30)

    def daemon_logs(self, lines: int = 40) -> str:
        """Tails of the slurmctld/slurmd logs, for failure messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log} -----\n" + "\n".join(tail))
        return "\n".join(parts)


def _script(name: str) -> list[str]:
    return ["bash", str(SLURM_SCRIPTS / name)]


def _pid_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _cluster_is_up() -> bool:
    # Pid files first: sinfo against a stopped controller blocks ~10 s before failing.
    if not all(_pid_alive(SLURM_DIR / "run" / f"{d}.pid") for d in ("slurmctld", "slurmd")):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            env={**os.environ, "SLURM_CONF": str(SLURM_CONF)},
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in {"idle", "mixed", "allocated"} for s in out.stdout.split())


def _run_script(name: str, timeout_s: float) -> None:
    proc = subprocess.run(_script(name), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f".ci/slurm/{name} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def local_slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local cluster; started here (and stopped on exit) when it is not already up.

    Skips the calling test when SLURM is missing outside CI; installs it under CI."""
    if shutil.which("sinfo") is None:
        if not in_ci():
            pytest.skip("SLURM is not installed (run .ci/slurm/install.sh); CI=true makes this run")
        _run_script("install.sh", timeout_s=600)
    started_here = False
    if not _cluster_is_up():
        _run_script("start.sh", timeout_s=180)
        started_here = True
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield SlurmCluster(conf=SLURM_CONF, log_dir=SLURM_DIR / "log", node=node)
    finally:
        if started_here:
            _run_script("stop.sh", timeout_s=60)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session-wide handle on the local SLURM cluster (see `local_slurm_cluster`)."""
    with local_slurm_cluster() as cluster:
        yield cluster
