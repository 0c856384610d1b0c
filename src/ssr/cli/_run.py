"""What ``ssr-train`` does around ``trainer.fit``: the checkpoint to resume, the processes that
share the cores, and the memory a finished job hands back."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ssr.runtime.hardware import cuda_available
from ssr.training.checkpoints import checked, newest_intact

log = logging.getLogger("ssr.train")


def is_rank_zero() -> bool:
    """Rank 0 of a distributed run, or a single process (known before the Trainer exists)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def resume_checkpoint(cfg: DictConfig, run_dir: Path, set_aside: bool = False) -> str | None:
    """``ckpt_path``, checked (:mod:`ssr.training.checkpoints`), with ``last`` meaning the newest
    intact checkpoint of this run.

    Lightning's own ``last`` looks only at ``last.ckpt``, which a kill between writing
    ``step<N>.ckpt`` and ``last.ckpt`` leaves missing or one save behind. A damaged file (cut
    short, or bytes changed inside: the archive's CRCs) is passed over with a warning naming it
    and the one used instead, and with ``set_aside`` (the run itself, not its preflight) renamed
    ``<name>.damaged``; no checkpoint yet means a fresh start. An explicit path to a damaged or
    missing file is a one-line :class:`~ssr.training.checkpoints.CheckpointError`.
    """
    ckpt_path = cfg.ckpt_path
    if ckpt_path in (None, "best", "hpc", "registry"):  # Lightning's own keywords
        return ckpt_path
    if ckpt_path != "last":
        return checked(str(ckpt_path))
    folder = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or run_dir / "checkpoints")
    path = newest_intact(folder, set_aside=set_aside and is_rank_zero())
    if path is None:
        log.info("ckpt_path=last: no checkpoint in %s yet; starting from scratch", folder)
        return None
    log.info("ckpt_path=last: resuming from %s", path)
    return str(path)


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
