"""Loggers and what reaches them: a CSV logger that keeps an interrupted run's metrics when the run
resumes in the same directory, credential redaction, the W&B sweep group resolver."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv. This one keeps its rows and, on the first
    save, drops only those from steps this run logs again (done after the checkpoint it resumed
    from), so every step appears once."""

    def _check_log_dir_exists(self) -> None:
        self._merged = False

    def save(self) -> None:
        if not self.metrics:
            return
        if not self._merged and self._fs.isfile(self.metrics_file_path):
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                kept = [r for r in reader if _step(r) is not None and _step(r) < first]
            self.metrics_keys = sorted(set(header) | set(self.metrics_keys))
            with self._fs.open(self.metrics_file_path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        self._merged = True
        super().save()


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to the run's metrics.csv on resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


REDACTED = "***redacted***"
# Config keys whose values are credentials (`api_key_env` only names an env var and is kept).
SECRET_KEY = re.compile(
    r"((^|_)(api_?key|secret|password|passwd|credentials?)"
    r"|(^|_)(access|auth|hf|api|bearer)_?token|^token)$",
    re.IGNORECASE,
)
# Env vars whose *values* must never reach a tracker, wherever they were interpolated.
SECRET_ENV = re.compile(r"(API[_-]?KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def redact(node: Any, secrets: set[str] | None = None) -> Any:
    """A copy of a plain config tree with credential keys and secret env values replaced."""
    if secrets is None:
        secrets = {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}
    if isinstance(node, dict):
        return {
            k: REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v, secrets)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [redact(v, secrets) for v in node]
    if isinstance(node, str) and any(s in node for s in secrets):
        return REDACTED
    return node


def wandb_sweep_group(experiment_name: str) -> str:
    """W&B group: the experiment name, plus the sweep directory's name inside a Hydra multirun
    (so all jobs of one sweep share a group and two sweeps do not)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return experiment_name
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return experiment_name
    parts = Path(hydra_cfg.sweep.dir).parts[-2:]
    return f"{experiment_name}-{'_'.join(parts)}"


if not OmegaConf.has_resolver("ssr.wandb_group"):
    OmegaConf.register_new_resolver("ssr.wandb_group", wandb_sweep_group)
