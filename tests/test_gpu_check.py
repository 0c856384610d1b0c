"""The prepared GPU check (experiments/gpu_check.sh): on a machine without CUDA it stops at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit of a machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh"), "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "gpu_check: no CUDA GPU here" in proc.stderr and "nothing was run" in proc.stderr
    assert not out.exists(), "nothing may be written"
