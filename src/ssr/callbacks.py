"""Training callbacks: stop on a non-finite loss before it reaches the weights or a checkpoint."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


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
