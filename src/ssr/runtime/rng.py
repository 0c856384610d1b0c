"""Global random-number-generator state (python, numpy, torch, cuda): read, restore, checkpoint."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The current state of every global generator a training step can draw from."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` (or :func:`from_checkpoint`) returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def to_checkpoint(states: Mapping[str, Any]) -> dict[str, Any]:
    """Plain lists, ints and tensors only, so ``torch.load(weights_only=True)`` reads them back."""
    version, internal, gauss = states["python"]
    name, keys, pos, has_gauss, cached = states["numpy"]
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [str(name), np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": states["torch"],
    }
    if "cuda" in states:
        out["cuda"] = list(states["cuda"])
    return out


def from_checkpoint(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`to_checkpoint`."""
    version, internal, gauss = saved["python"]
    name, keys, pos, has_gauss, cached = saved["numpy"]
    states: dict[str, Any] = {
        "python": (int(version), tuple(int(k) for k in internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
        "torch": saved["torch"],
    }
    if "cuda" in saved:
        states["cuda"] = list(saved["cuda"])
    return states
