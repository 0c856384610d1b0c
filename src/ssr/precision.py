"""Dtype names in configs -> torch dtypes, and the autocast dtype a Trainer's precision implies."""

from __future__ import annotations

from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def torch_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """A config dtype name (``bfloat16``, ``bf16``, ``float32``...) as a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def autocast_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``bf16``/``fp16`` (or a dtype) -> torch dtype; ``None``/``none``/``fp32`` -> no autocast."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = name.lower()
    if key in {"none", "32"}:
        return None
    if key not in DTYPES:
        raise ValueError(f"unknown autocast dtype {name!r}; use bf16, fp16 or none")
    return None if DTYPES[key] == torch.float32 else DTYPES[key]


def trainer_autocast(trainer: Any) -> str | None:
    """The autocast dtype a Lightning Trainer trains under: ``bf16``/``fp16`` for ``*-mixed``
    precision, else ``None``."""
    precision = str(getattr(trainer, "precision", ""))
    if precision.startswith("bf16-mixed"):
        return "bf16"
    if precision.startswith("16-mixed"):
        return "fp16"
    return None
