"""Preemption: SIGTERM, SIGINT or the requeue signal end a run with a checkpoint at the current
step, a ``STATUS`` file saying so, and a non-zero exit (or a requeue, under submitit).

Lightning's own handling is not enough: its SIGTERM handler only sets ``trainer.received_sigterm``,
the loops then raise ``SIGTERMException``, a ``SystemExit`` without a code, so the process exits 0
with no checkpoint of the steps since the last periodic one. Here:

- while training, a signal sets a flag; at the end of the next optimizer step every rank agrees
  (one all-reduce of the flag under DDP, so one signalled rank stops them all at the same step),
  the checkpoint is saved to ``last.ckpt`` (all ranks, rank 0 writes) and :class:`Preempted` is
  raised on every rank;
- before training (data preparation: generation and judging, whose caches keep every finished
  batch) and after it, or on a second signal, :class:`Preempted` is raised at once.

:class:`Preempted` is a ``SystemExit`` with code ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).
When the launcher had its own handler for the requeue signal (submitit's checkpoint-and-requeue,
``hydra/launcher=slurm``), that handler is called after the checkpoint is saved: it requeues the job,
which resumes with ``ckpt_path=last``.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

from ssr.runtime.files import atomic_write_text

log = logging.getLogger("ssr.train")


class Preempted(SystemExit):
    """The run stopped on a signal; ``checkpoint`` is where its last step was saved (or None)."""

    def __init__(self, signum: int, step: int | None, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name
        self.step, self.checkpoint = step, checkpoint

    def __str__(self) -> str:
        where = f"at step {self.step}" if self.step is not None else "before training (data preparation)"
        saved = f"checkpoint {self.checkpoint}" if self.checkpoint else "no new checkpoint"
        return f"interrupted {where} by {self.signal_name} ({saved})"


def _signum(name: str | int) -> int:
    if isinstance(name, int):
        return name
    text = str(name).upper()
    return int(getattr(signal, text if text.startswith("SIG") else f"SIG{text}"))


class Preemption(L.Callback):
    """Checkpoint, mark and exit on ``signals`` (names like ``TERM``, ``INT``, ``USR2``).

    ``requeue_signal`` is the one the launcher sends before a time limit (submitit: ``USR2``,
    ``hydra/launcher=slurm``'s ``signal_delay_s``); its previous handler, if any, runs after the
    checkpoint. :meth:`install` puts the handlers in place (from the entry point, before data
    preparation); :meth:`uninstall` restores the previous ones.
    """

    def __init__(self, signals: list[str] | None = None, requeue_signal: str | None = "USR2") -> None:
        names = list(signals if signals is not None else ["TERM", "INT"])
        if requeue_signal:
            names.append(requeue_signal)
        self.signals = list(dict.fromkeys(_signum(n) for n in names))
        self.requeue_signal = _signum(requeue_signal) if requeue_signal else None
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._deferring = False  # inside the training loop: act at the end of the step
        self._step: int | None = None  # None: training has not started
        self.stopped: Preempted | None = None  # how the run stopped, for its STATUS

    # ------------------------------------------------------------------ handlers
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self._received is None
        self._received = signum
        name = signal.Signals(signum).name
        if self._deferring and first:
            log.warning("received %s: saving a checkpoint at the end of this step, then stopping", name)
            return
        why = "a second signal" if not first else "no training step in progress to save"
        log.warning("received %s: stopping now (%s)", name, why)
        raise Preempted(signum, self._step, None)

    # ------------------------------------------------------------------ training loop
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning put its own SIGTERM handler in place when fit started (it would only set a
        # flag and exit 0 at the end of the step): the training loop is this callback's
        self._step = trainer.global_step
        if signal.SIGTERM in self.signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
        self._deferring = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._deferring = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # not an optimizer step: its gradients would be lost
        stop = self._received is not None
        if trainer.world_size > 1:  # every rank stops at the same step, or none does
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:  # saved like ModelCheckpoint's own step checkpoints; the stop follows the step's logging
            signum = self._received or signal.SIGTERM  # a rank that got none stops with the others
            self.stopped = Preempted(signum, trainer.global_step, self._save(trainer))

    # the first hook after the step's metrics were logged: the next batch, the epoch's end (after
    # the callbacks listed before this one), validation
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)
        self._deferring = False
        self._step = trainer.global_step

    def _stop(self, trainer: L.Trainer) -> None:
        error = self.stopped
        if error is None:
            return
        for logger in trainer.loggers:  # the metrics up to the saved step reach their files
            logger.save()
        log.warning("%s", error)
        previous = self._previous.get(self._received or 0)
        if self._received == self.requeue_signal and callable(previous) and trainer.is_global_zero:
            self._deferring = False
            previous(self._received, None)  # the launcher's checkpoint-and-requeue (submitit): it exits
        raise error

    @staticmethod
    def _save(trainer: L.Trainer) -> str | None:
        """``last.ckpt`` at this step (every rank calls it; rank 0 writes)."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if callback is None or not dirpath:
            return None
        path = str(Path(dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
        # recorded as the run's last checkpoint, so the resumed run overwrites it (no last-v1.ckpt)
        callback.last_model_path = path
        trainer.save_checkpoint(path)
        return path


STATUS_FILE = "STATUS"


def write_status(run_dir: str | Path, error: BaseException | None = None, running: bool = False) -> None:
    """``STATUS`` in the run directory: ``running``, ``done``, ``interrupted at step N by SIG...``
    or ``failed: ...`` (one line; rank 0 writes it)."""
    atomic_write_text(Path(run_dir) / STATUS_FILE, ("running" if running else run_status(error)) + "\n")


def run_status(error: BaseException | None) -> str:
    """The ``STATUS`` line for how a run ended (None: it finished)."""
    if error is None:
        return "done"
    if isinstance(error, Preempted):
        return f"{error}; resume with ckpt_path=last"
    first = str(error).splitlines()[0] if str(error) else ""
    return f"failed: {type(error).__name__}: {first}"[:500]
