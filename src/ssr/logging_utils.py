"""What ssr-train sends to experiment trackers (W&B): the redacted run config and the selection stats.

Everything W&B-specific lives here; the rest of the code only passes Lightning loggers through.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

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


def _wandb_loggers(trainer: L.Trainer) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class TrackerLogging(L.Callback):
    """Logs the redacted run config at fit start and the selection statistics once training starts
    (after ``prepare_data`` wrote them): a ``selection/by_source`` table and summary values."""

    def __init__(self, config: dict[str, Any], stats_path: str | Path) -> None:
        self.config = redact(config)
        self.stats_path = Path(stats_path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in _wandb_loggers(trainer):
            logger.log_hyperparams({"run": self.config})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero or not self.stats_path.is_file():
            return
        stats = json.loads(self.stats_path.read_text())
        rows = [
            [
                source,
                stats["counts"].get(source, 0),
                stats["by_source"][source],
                stats["by_source_answerable"][source],
                stats["by_source_unanswerable"][source],
            ]
            for source in stats["by_source"]
        ]
        summary = {f"selection/share_{k}": v for k, v in stats["by_source"].items()}
        summary["selection/rows"] = stats["rows"]
        for key in ("judge_accept_rate_self", "judge_accept_rate_rewrite"):
            if stats.get(key) is not None:
                summary[f"selection/{key}"] = stats[key]
        for stage, counters in (stats.get("extra", {}).get("stages") or {}).items():
            summary[f"stages/{stage}/computed"] = counters["computed"]
            summary[f"stages/{stage}/cached"] = counters["cached"]
        for logger in loggers:
            logger.log_table(
                key="selection/by_source",
                columns=["source", "count", "share", "share_answerable", "share_unanswerable"],
                data=rows,
            )
            logger.experiment.summary.update(summary)

    @staticmethod
    def finish(trainer: L.Trainer, summary: dict[str, Any]) -> None:
        """Record the run's outcome and close the W&B run (the next job of a sweep that runs in
        this process, e.g. with Hydra's basic launcher, must start a run of its own)."""
        if not trainer.is_global_zero:
            return
        for logger in _wandb_loggers(trainer):
            final = {f"final/{k}": summary[k] for k in ("global_step", "epochs", "wall_s") if k in summary}
            logger.experiment.summary.update(final)
            logger.experiment.finish()
