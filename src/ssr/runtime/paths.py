"""Where ssr keeps caches and finds offline data."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_root() -> Path:
    """Root of shared caches (converted models, generations, verdicts): env ``SSR_CACHE``."""
    root = os.environ.get("SSR_CACHE") or platformdirs.user_cache_dir("ssr")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path:
    """Root of offline dataset files: env ``SSR_DATA_ROOT`` (CI points it at ``../shared/data``)."""
    root = os.environ.get("SSR_DATA_ROOT")
    if not root:
        raise RuntimeError(
            "SSR_DATA_ROOT is not set: point it at the offline data folder "
            "(e.g. export SSR_DATA_ROOT=../shared/data)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"SSR_DATA_ROOT={root} is not a directory")
    return path
