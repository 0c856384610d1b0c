"""Checkpoint files a run resumes from: checked byte for byte, read without running code.

A Lightning checkpoint is a zip archive (``torch.save``) whose members carry CRC-32 checksums:
:func:`damage` reads every member and compares them, so a copy cut short *and* bytes changed
inside a tensor are found before a resume (``zipfile.is_zipfile`` only looks at the end of the
file). :func:`read_checkpoint` unpickles with ``weights_only=True``: tensors, containers and plain
values only, so a crafted file cannot run code when it is read.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ssr.runtime.configs import ConfigError

log = logging.getLogger(__name__)

DAMAGED_SUFFIX = ".damaged"  # a damaged checkpoint set aside: no longer ``*.ckpt``


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (damaged, missing, or not safe to unpickle)."""


def damage(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None for an intact checkpoint.

    Every archive member is read and checked against its CRC-32. A directory (DeepSpeed's
    sharded checkpoint) is taken as it is.
    """
    path = Path(path)
    if path.is_dir():
        return None
    if not path.exists():
        return "no such file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as err:
        return f"not a complete zip archive ({err}); interrupted while written?"
    if bad is not None:
        return f"archive member {bad!r} fails its CRC check (damaged on disk)"
    return None


def read_checkpoint(path: str | Path) -> Any:
    """The unpickled checkpoint, tensors memory-mapped; raises :class:`CheckpointError` for a
    pickle that needs anything beyond tensors and plain values (it could run code)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = re.search(r"WeightsUnpickler error: ([^\n]+)", str(err))
        what = f"it names {found.group(1)}" if found else reason.group(1) if reason else "not weights-only"
        raise CheckpointError(
            f"{path}: refusing to unpickle it ({what}, beyond tensors and plain values: loading it "
            "could run code); resume only from checkpoints ssr-train wrote"
        ) from err


def checked(ckpt_path: str) -> str:
    """An explicit ``ckpt_path``: the path itself, or a one-line :class:`CheckpointError`."""
    why = damage(ckpt_path)
    if why is not None:
        raise CheckpointError(f"ckpt_path={ckpt_path}: {why}")
    return ckpt_path


def newest_intact(folder: Path, set_aside: bool = False) -> Path | None:
    """The newest checkpoint in ``folder`` that passes :func:`damage` (None: no intact one).

    Damaged newer ones are named in a warning with the one used instead; with ``set_aside`` they
    are renamed ``<name>.damaged``, so that neither the next resume nor Lightning's ``last.ckpt``
    (which would otherwise write ``last-v1.ckpt`` beside the broken file) sees them again.
    """
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    damaged: list[str] = []
    for path in candidates:
        why = damage(path)
        if why is None:
            if damaged:
                log.warning("ckpt_path=last: %s; resuming from %s instead", "; ".join(damaged), path)
            return path
        damaged.append(f"{path} is damaged ({why})")
        if set_aside:
            path.rename(path.with_name(path.name + DAMAGED_SUFFIX))
            damaged[-1] += f", set aside as {path.name}{DAMAGED_SUFFIX}"
    if damaged:
        log.warning(
            "ckpt_path=last: %s; no intact checkpoint left: starting from scratch", "; ".join(damaged)
        )
    return None
