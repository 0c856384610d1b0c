"""The benchmark's plumbing: sub-processes with their own peak RSS, the run context, formatting.

Every section (``sections/``) is one module with the same three functions:

- ``run(ctx, res)``: measure, writing its results into ``res`` (each task in its own process);
- ``render(res)``: its part of RESULTS.md (markdown lines);
- ``targets(res)``: its rows of the targets table, ``(target, measured, status)``.

``run_all.py`` runs the sections in order, then renders and checks them in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import OFFLINE_ENV, loadavg

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EMBEDDED = "embedded:smollm2-135m-instruct"
# an AVX2-only CPU: oneDNN, MKL and ATen's own vectorised kernels (and so the decode-attention
# kernel's build flags) capped at AVX2
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
Target = tuple[str, str, str]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: env.get(k, v) for k, v in OFFLINE_ENV.items()})
    env.setdefault("SSR_DATA_ROOT", "/work/shared/data")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(HERE), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update(extra or {})
    return env


def run_child(cmd: list[str], log_path: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``; return wall time, exit code and the child's own peak RSS (os.wait4)."""
    t0 = time.perf_counter()
    load0 = loadavg()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "maxrss_mib": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "loadavg_start": load0,
        "loadavg_end": loadavg(),
        "log": str(log_path),
    }


class Runner:
    """Runs ``worker.py TASK`` in its own process per task (its peak RSS is that task's alone)."""

    def __init__(self, work: Path, timeout: float, verbose: bool = True) -> None:
        self.work, self.timeout, self.verbose = work, timeout, verbose
        self.n = 0

    def task(self, task: str, args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        self.n += 1
        out = self.work / f"{self.n:02d}_{task}.json"
        log = self.work / f"{self.n:02d}_{task}.log"
        cmd = [sys.executable, str(HERE / "worker.py"), task, json.dumps(args), str(out)]
        self.say(f"[{time.strftime('%H:%M:%S')}] {task} ... ")
        proc = run_child(cmd, log, child_env(env), self.timeout)
        if proc["rc"] != 0 or not out.exists():
            tail = Path(log).read_text(errors="replace")[-3000:]
            self.say(f"FAILED (rc {proc['rc']}) after {proc['wall_s']:.0f}s\n{tail}\n")
            return {"error": f"rc={proc['rc']}", "log_tail": tail[-800:], "proc": proc}
        result = json.loads(out.read_text())
        result["proc"] = proc
        self.say(
            f"{proc['wall_s']:.0f}s, peak RSS {proc['maxrss_mib']:.0f} MiB, load {proc['loadavg_end']}\n"
        )
        return result

    def say(self, text: str) -> None:
        if self.verbose:
            sys.stderr.write(text)
            sys.stderr.flush()


@dataclass
class Context:
    """What every section's ``run`` gets: the options, the runner and the shared task arguments."""

    opts: argparse.Namespace
    runner: Runner
    base: dict[str, Any] = field(default_factory=dict)  # model and precision of every task


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:,.{nd}f}"


def status(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    sys.path.insert(0, str(REPO / "src"))
    from ssr.runtime.hardware import cpu_isa, cpu_name, isa_env, usable_cores

    versions = {}
    for pkg in ("torch", "transformers", "trl", "lightning", "peft", "accelerate", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "isa": cpu_isa(),
        "isa_env": isa_env(),
        "cpu": cpu_name(),
        "cores": usable_cores(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
