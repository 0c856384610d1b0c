"""A Lightning callback the GPU check adds to ``ssr-train`` (``+callbacks.gpu_meter``): per optimizer
step the real tokens, row lengths and end time (after a device synchronisation), the model's FLOP
formula, and the peak device memory before training (generation, judge, base evaluation), of the
training steps, and of the whole run, written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from steps import FlopModel, StepLog


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


class TrainMeter(L.Callback):
    """Throughput over the optimizer steps after ``warmup``; memory peaks; ``out``: the JSON file."""

    def __init__(self, out: str, warmup: int = 1) -> None:
        self.out, self.warmup = Path(out), warmup
        self.steps = StepLog()
        self.before_train_peak: int | None = None
        self.train_peak = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync()
        self.steps.begin()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.before_train_peak is None:  # the steps' own peak from here on
            self.before_train_peak = _peak_bytes()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        mask = batch.get("attention_mask")
        if mask is None:  # packed rows: positions restart at 0 for every row
            starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0]
            lengths = [b - a for a, b in zip(starts, [*starts[1:], batch["position_ids"].shape[1]])]
            padded = sum(lengths)
        else:
            lengths, padded = [int(x) for x in mask.sum(1).tolist()], int(mask.numel())
        self.steps.record_batch(lengths, int(batch["num_response_tokens"]), padded)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        _sync()
        self.steps.end_step()
        self.train_peak = max(self.train_peak, _peak_bytes())

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        flops = FlopModel.of(pl_module.model)
        result: dict[str, Any] = {
            "flop_model": flops.__dict__,
            "before_train_peak_memory_bytes": self.before_train_peak or 0,
            "train_peak_memory_bytes": self.train_peak,
            "run_peak_memory_bytes": max(self.before_train_peak or 0, _peak_bytes()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        try:
            result.update(self.steps.summary(self.warmup, flops))
        except RuntimeError as err:  # fewer steps than the warmup: no throughput, say why
            result["error"] = str(err)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(result, indent=1))
