"""Run the real `ssr-train` entry point in a subprocess (this checkout's src/, offline, tiny config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO, TINY_OVERRIDES

# Set by an in-process distributed run (e.g. the DeepSpeed tests); a child would join that group.
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


def cli_env(**extra: str) -> dict[str, str]:
    """os.environ with this checkout's src/ first on PYTHONPATH (DDP ranks inherit it)."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**env, "PYTHONPATH": path, **extra}


def train_cmd(*overrides: str) -> list[str]:
    """`ssr-train` as `python -m ssr.cli.train` (Lightning re-runs the same command for DDP ranks)."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    return [sys.executable, "-m", "ssr.cli.train", *flags, *TINY_OVERRIDES, *rest]


def run_train(
    *overrides: str, cwd: Path, timeout_s: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_cmd(*overrides),
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, (
        f"ssr-train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return proc


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def adapter_shapes(run_dir: Path) -> dict[str, tuple[int, ...]]:
    from safetensors.torch import load_file

    return {
        k: tuple(v.shape) for k, v in load_file(run_dir / "adapter" / "adapter_model.safetensors").items()
    }


def jsonl_rows(path: Path) -> list[str]:
    """Non-empty lines of a JSONL file (duplicates included: the cache files are append-only)."""
    return [line for line in path.read_text().splitlines() if line.strip()]
