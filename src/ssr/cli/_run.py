"""What ``ssr-train`` does around ``trainer.fit``: the checkpoint to resume, the processes that
share the cores, and the memory a finished job hands back."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import zipfile
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ssr.runtime.hardware import cuda_available

log = logging.getLogger("ssr.train")


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path``, with ``last`` meaning the newest complete checkpoint of this run.

    Lightning's own ``last`` looks only at ``last.ckpt``, which a kill between writing
    ``step<N>.ckpt`` and ``last.ckpt`` leaves missing or one save behind. A file that is not a
    complete zip archive (a copy cut short) is skipped; no checkpoint yet means a fresh start.
    """
    ckpt_path = cfg.ckpt_path
    if ckpt_path != "last":
        return ckpt_path
    folder = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or run_dir / "checkpoints")
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in candidates:
        if path.is_dir() or zipfile.is_zipfile(path):  # DeepSpeed writes a directory
            log.info("ckpt_path=last: resuming from %s", path)
            return str(path)
        log.warning("ckpt_path=last: skipping %s (incomplete; interrupted while written)", path)
    log.info("ckpt_path=last: no checkpoint in %s yet; starting from scratch", folder)
    return None


def local_processes(trainer: L.Trainer) -> int:
    """Processes of this run sharing this machine's cores (CPU DDP ranks), else 1."""
    from lightning.pytorch.accelerators import CPUAccelerator

    return trainer.num_devices if isinstance(trainer.accelerator, CPUAccelerator) else 1


def release_memory() -> None:
    """Hand what a finished job freed back to the OS before the next job of a sweep.

    Hydra's basic launcher runs every ``-m`` job in one process: without this, the model, the
    Lightning objects (reference cycles) and glibc's cached heap of the last job stay resident,
    and a CPU sweep's RSS grew by several GB per job.
    """
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
