"""What this process runs on: CPU model and instruction sets, GPU name, usable cores, torch threads."""

from __future__ import annotations

import logging
import os
import platform
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

# CPU flags that decide which dtype is fast (reported in benchmarks and precision records)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")
# Variables that cap the instruction sets oneDNN / MKL / ATen use (they change what is fast)
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_isa() -> list[str]:
    """The performance-relevant CPU flags of this machine (``/proc/cpuinfo``), e.g. ``["avx2"]``."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in ISA_FLAGS if f in flags]


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device_type: str) -> str:
    if device_type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


def isa_env() -> dict[str, str]:
    """The ISA-capping variables set in this environment (part of every measured verdict's key)."""
    return {k: os.environ[k] for k in ISA_ENV if k in os.environ}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(local_processes: int = 1) -> int:
    """Set torch's intra-op threads to the usable cores divided between ``local_processes``.

    ``OMP_NUM_THREADS`` (or ``SSR_NUM_THREADS``), when set, wins. Returns the thread count.
    """
    explicit = os.environ.get("SSR_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if explicit and explicit.strip().isdigit() and int(explicit) > 0:
        threads = int(explicit)
    else:
        threads = max(1, usable_cores() // max(1, local_processes))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.info(
            "torch threads: %d (%d usable cores, %d local processes)",
            threads,
            usable_cores(),
            local_processes,
        )
    return threads


def process_age_s() -> float:
    """Seconds since this process started (imports included), from ``/proc``; 0 if unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def cuda_available() -> bool:
    """Whether a CUDA device is visible to this process."""
    return torch.cuda.is_available()
