"""Training callbacks: stop on a non-finite loss before it reaches the weights or a checkpoint;
carry what an exact resume needs (RNG states, the run fingerprint) in every checkpoint; log
progress lines that reach files and pipes; send the run config and selection stats to W&B."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from ssr.runtime import rng
from ssr.runtime.faults import fault_point
from ssr.training.fingerprint import CHECKPOINT_KEY
from ssr.training.loggers import redact

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("ssr.train")


class ProgressLog(L.Callback):
    """Logs ``step i/n, loss, lr, tokens/s, eta`` every ``every_n_steps`` optimizer steps.

    Goes through Python logging, so it reaches the run's log file and stdout whether or not a
    terminal is attached (the tqdm bar only draws on a terminal).
    """

    def __init__(self, every_n_steps: int = 5) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.progress_log.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._started = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started, self._first_step = time.perf_counter(), trainer.global_step
        log.info("training: %d optimizer steps", trainer.estimated_stepping_batches)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, total = trainer.global_step, int(trainer.estimated_stepping_batches)
        new_step = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not trainer.is_global_zero or not new_step or (step % self.every_n_steps and step != total):
            return
        metrics = trainer.callback_metrics
        elapsed = time.perf_counter() - self._started
        done = max(step - self._first_step, 1)
        parts = [f"step {step}/{total}", f"epoch {trainer.current_epoch}"]
        for key, fmt in (("train/loss", "loss {:.4f}"), ("train/tokens_per_s", "tokens/s {:.0f}")):
            if key in metrics:
                parts.append(fmt.format(float(metrics[key])))
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"elapsed {elapsed:.0f}s, eta {elapsed / done * max(total - step, 0):.0f}s")
        log.info(" | ".join(parts))


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients of a training step are NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Stops the run at the first step whose loss (or gradient) is NaN/inf, naming the step.

    The checks run before backward (loss) and before the optimizer step (gradients), so the bad
    update never reaches the weights and no checkpoint with a NaN state is written: the run's last
    checkpoint stays the last good one. One host sync per check (cheap next to a training step).
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    @staticmethod
    def _where(trainer: L.Trainer) -> str:
        loop = trainer.fit_loop.epoch_loop
        step = trainer.global_step + 1
        batch = loop.batch_progress.current.ready - 1
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        return (
            f"training step {step} (epoch {trainer.current_epoch}, batch {batch}); the update was not "
            f"applied. Last checkpoint: {ckpt}. Lower optim.lr, check the data, or resume with "
            "ckpt_path=last after fixing the cause"
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach().float())
        if not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite loss ({value}) at {self._where(trainer)}")

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        if not self.check_gradients:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:  # DeepSpeed keeps gradients inside its engine
            return
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise NonFiniteLossError(f"non-finite gradients at {self._where(trainer)}")


class ResumeState(L.Callback):
    """Checkpoints carry the global RNG states and the run fingerprint.

    Dropout draws from torch's global generator, which Lightning does not checkpoint: without it a
    resumed run drew different dropout masks from the resume point on. The states saved with a
    checkpoint are restored just before the first training batch after the resume, so whatever
    runs between restoring the checkpoint and that batch (model set-up, the drift callback's base
    evaluation) cannot shift them. Single-process runs only: with several ranks the checkpoint
    holds rank 0's states, which would not be the other ranks' own, so they are not restored.

    ``run_record`` (:func:`ssr.training.fingerprint.make_record`) is written into every checkpoint as
    ``checkpoint["ssr_run"]``. ``SSR_FAULT_AT=train.step:<n>`` kills the process after its n-th
    training batch, before that batch's checkpoint is written (see :mod:`ssr.runtime.faults`).
    """

    def __init__(self, run_record: dict[str, Any] | None = None) -> None:
        self.run_record = run_record
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng.to_checkpoint(rng.rng_states())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("rng")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        saved, self._restore = self._restore, None
        if saved is not None and trainer.world_size == 1:
            rng.set_rng_states(rng.from_checkpoint(saved))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        fault_point("train.step")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.run_record is not None:
            checkpoint[CHECKPOINT_KEY] = {k: self.run_record[k] for k in ("fingerprint", "config")}


def _wandb_loggers(trainer: L.Trainer) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class TrackerLogging(L.Callback):
    """Logs the redacted run config at fit start and the selection statistics once training starts
    (after the selection wrote them): a ``selection/by_source`` table and summary values."""

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


def instantiate_callbacks(node: DictConfig, **runtime: Any) -> dict[str, L.Callback]:
    """The ``callbacks`` group, by name; a ``_partial_: true`` entry is completed with the run-time
    objects (``runtime``) that its constructor names. A null entry is left out."""
    from hydra.utils import instantiate

    out: dict[str, L.Callback] = {}
    for name, cfg in node.items():
        if cfg is None:
            continue
        made = instantiate(cfg)
        if isinstance(made, functools.partial):
            wanted = inspect.signature(made.func).parameters
            made = made(**{k: v for k, v in runtime.items() if k in wanted})
        out[str(name)] = made
    return out
