"""Minimal Hydra app for launcher tests: each job writes `result.json` into its own output dir.

    python tests/apps/slurm_probe.py -m hydra/launcher=slurm x=1,2

The repo's `conf/` is on the Hydra searchpath, so `hydra: default` and `hydra/launcher=...` are
the same files `ssr-train` uses.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

REPO_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
os.environ.setdefault("SSR_CONF_DIR", str(REPO_CONF_DIR))


@hydra.main(version_base="1.3", config_path="slurm_probe_conf", config_name="probe")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = {
        "x": cfg.x,
        "x_squared": cfg.x * cfg.x,
        "job_num": HydraConfig.get().job.get("num"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_ntasks": os.environ.get("SLURM_NTASKS"),
        "hostname": socket.gethostname(),
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
