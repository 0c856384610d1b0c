"""Lightning callback: evaluate the base model at fit start and the model after every n epochs
(and, with ``every_n_steps``, every n optimizer steps: forgetting along training).

The scores come from :class:`ssr.eval.evaluator.Evaluator` (suite + self-drift + kl_task + task
metrics; per-item results under ``<run>/eval_items/<base|epoch_n>/``, :mod:`ssr.eval.items`);
this file only decides when, keeps training undisturbed, and reports. Each evaluation is logged to
every logger as ``drift/<task>/<metric>`` and ``drift_delta/<task>/<metric>`` (minus the base), as
a W&B table for W&B loggers, and written to ``drift.json`` (and the task metrics to ``eval.json``)::

    {"suite": {...}, "self_drift": {...}, "kl_task": {...}, "ifeval": {...},
     "base": {"stage": "base", "epoch": -1, "step": 0, "scores": {task: {metric: value}}},
     "epochs": [{"stage": "epoch", "epoch": 0, "step": 40, "scores": {...}, "delta": {...}}, ...],
     "steps": [{"stage": "step", "epoch": 0, "step": 10, "scores": {...}, "tasks": {...}, "delta": ...}, ...],
     "final": {"settings": {"suite", "self_drift", "kl_task", "ifeval", "tasks"?}, "base": {...},
               "model": {..., "tasks"?, "delta"}}}

In a multi-process run every rank evaluates (:mod:`ssr.runtime.distributed`): its share of the
requests (DDP, ZeRO-1/2), or all of them in step with the others under ZeRO-3 (each forward gathers
the partitioned weights from every rank); the results are gathered on every rank, and rank 0
alone writes the files and logs. Such a record has ``ranks``: the mode, the world size and the
items each rank computed per source.

``final`` is there when ``eval.final`` is enabled: the base and the trained model evaluated once
more at the end of training at its larger settings (logged as ``final/...``, ``final_delta/...``;
items under ``eval_items/final_base`` and ``eval_items/final``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from ssr.eval.evaluator import SELF_DRIFT_KEY, EvalRecord, Evaluator, eval_summary, write_json
from ssr.eval.ifeval import Replies
from ssr.eval.items import FINAL_BASE_TAG, FINAL_TAG, ITEMS_DIR, ItemSink, epoch_tag, step_tag
from ssr.eval.self_drift import SelfDriftReference, is_peft
from ssr.eval.suite import Scores
from ssr.runtime.distributed import Shard, sharding
from ssr.runtime.precision import trainer_autocast
from ssr.runtime.rng import rng_states, set_rng_states

log = logging.getLogger(__name__)

DRIFT_FILE = "drift.json"
EVAL_FILE = "eval.json"
REFERENCE_FILE = "self_drift_reference.json"
TABLE_COLUMNS = ["stage", "epoch", "step", "task", "metric", "value", "base", "delta"]


@contextlib.contextmanager
def preserved_state(module: torch.nn.Module) -> Iterator[None]:
    """Restore global RNG states (python, numpy, torch, cuda) and every submodule's train/eval flag."""
    states = rng_states()
    modes = {m: m.training for m in module.modules()}
    try:
        yield
    finally:
        set_rng_states(states)
        for m, training in modes.items():
            m.training = training


def flat_metrics(scores: Scores, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{task}/{m}": v for task, metrics in scores.items() for m, v in metrics.items()}


def score_deltas(scores: Scores, base: Scores) -> Scores:
    """``scores - base`` for every (task, metric) present in both."""
    return {
        task: {m: v - base[task][m] for m, v in metrics.items() if m in base.get(task, {})}
        for task, metrics in scores.items()
        if task in base
    }


def table_rows(records: list[EvalRecord]) -> list[list[Any]]:
    """One row per (record, task, metric) with its base value and delta (for a W&B table)."""
    base = next((r["scores"] for r in records if r["stage"] == "base"), {})
    rows = []
    for r in records:
        for task, metrics in r["scores"].items():
            for metric, value in metrics.items():
                ref = base.get(task, {}).get(metric, math.nan)
                rows.append([r["stage"], r["epoch"], r["step"], task, metric, value, ref, value - ref])
    return rows


class GeneralizationDriftCallback(pl.Callback):
    """Track generalisation drift during fine-tuning (base at fit start, then every n epochs).

    ``every_n_steps`` (0: off) adds an evaluation, task metrics included, every n optimizer steps
    inside an epoch (not at its last batch: the epoch's own evaluation follows there), so a run
    yields curves of task gain and of each drift measure against steps (``drift.json`` ``steps``).

    ``mixed_precision``: ``auto`` follows the trainer (``bf16-mixed`` -> bf16 autocast), or an
    :mod:`ssr.runtime.precision` setting; ``run_dir``: where ``drift.json`` goes (default
    ``trainer.default_root_dir``); ``tokenizer``: default ``trainer.datamodule.tokenizer``.
    """

    def __init__(
        self,
        evaluator: Evaluator | None,
        every_n_epochs: int = 1,
        run_dir: str | Path | None = None,
        mixed_precision: str = "auto",
        enabled: bool = True,
        tokenizer: Any = None,
        every_n_steps: int = 0,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0: off), got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.evaluator, self.every_n_epochs, self.mixed_precision = evaluator, every_n_epochs, mixed_precision
        self.run_dir = Path(run_dir) if run_dir else None
        self.active, self.tokenizer = enabled, tokenizer
        self.records: list[EvalRecord] = []
        self.final_records: list[EvalRecord] = []  # eval.final: [base, model] at the end of training
        self._early_final_base: EvalRecord | None = None  # a plain model's final base, before training
        self._epoch_started: float | None = None

    @property
    def enabled(self) -> bool:
        return self.active and self.evaluator is not None and self.evaluator.has_work

    @property
    def base_scores(self) -> Scores | None:
        return next((r["scores"] for r in self.records if r["stage"] == "base"), None)

    # --- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.base_scores is not None:  # resumed with the base already measured
            return
        if trainer.ckpt_path:
            log.warning(
                "drift: resuming from %s without a stored base evaluation; deltas are skipped",
                trainer.ckpt_path,
            )
            return
        self._evaluate(trainer, pl_module, "base")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.every_n_steps or not step or step % self.every_n_steps or trainer.is_last_batch:
            return
        if any(r["step"] == step for r in self.records):  # gradient accumulation: once per step
            return
        self._evaluate(trainer, pl_module, "step")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._evaluate(trainer, pl_module, "epoch")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the last epoch's own evaluation (also when a resumed run had nothing left to train)
        final = self.evaluator.final if self.evaluator is not None else None
        if final is not None and not self.final_records:
            self._evaluate(trainer, pl_module, "final")

    def state_dict(self) -> dict[str, Any]:
        ref = self.evaluator.reference if self.evaluator is not None else None
        replies = self.evaluator.ifeval.reference if self.evaluator is not None else None
        return {
            "records": self.records,
            "final_records": self.final_records,
            "final_base": self._early_final_base,
            "reference": ref.__dict__ if ref is not None else None,
            "ifeval_reference": asdict(replies) if replies is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        self.final_records = list(state_dict.get("final_records", []))
        self._early_final_base = state_dict.get("final_base")
        ref = state_dict.get("reference")
        if self.evaluator is not None:
            self.evaluator.reference = SelfDriftReference(**ref) if ref else None
            replies = state_dict.get("ifeval_reference")  # the base's replies (a resumed plain model
            self.evaluator.ifeval.reference = Replies(**replies) if replies else None  # is no base)

    # --- one evaluation ---------------------------------------------------------------------------
    def _tokenizer(self, trainer: pl.Trainer) -> Any:
        tokenizer = self.tokenizer or getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "GeneralizationDriftCallback needs a tokenizer: pass tokenizer= or give the "
                "datamodule a .tokenizer attribute"
            )
        return tokenizer

    def _precision(self, trainer: pl.Trainer) -> str | None:
        """The evaluations' autocast setting: the trainer's (``auto``) or the callback's own."""
        return trainer_autocast(trainer) if self.mixed_precision == "auto" else self.mixed_precision

    def _run_dir(self, trainer: pl.Trainer) -> Path:
        return self.run_dir or Path(trainer.default_root_dir)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        # every rank evaluates: its share of the work, gathered on every rank; under ZeRO-3 all of
        # it in step with the others (each forward gathers the partitioned weights from all ranks)
        shard = Shard.of_process_group(split=not getattr(trainer.strategy, "zero_stage_3", False))
        trainer.strategy.barrier("ssr_drift_start")
        epoch_s = (
            time.perf_counter() - self._epoch_started if stage != "base" and self._epoch_started else None
        )
        started = time.perf_counter()
        with preserved_state(pl_module), sharding(shard):
            if stage == "final":
                self.final_records = self._measure_final(trainer, pl_module)
            else:
                record = self._measure(trainer, pl_module, stage)
                record["seconds"]["eval"] = round(time.perf_counter() - started, 2)  # all of it
                if epoch_s is not None:
                    record["seconds"]["epoch"] = round(epoch_s, 2)  # training + validation, before it
                self.records.append(record)
        if trainer.is_global_zero:  # records and logs: rank 0 alone
            if stage == "final":
                self._log_final(trainer)
            else:
                self._log(trainer, record)
            self._write(trainer)
        trainer.strategy.barrier("ssr_drift_end")

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> EvalRecord:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "GeneralizationDriftCallback expects the Hugging Face model (or its PEFT wrapper) "
                f"at pl_module.model; {type(pl_module).__name__} has none"
            )
        tokenizer, ev = self._tokenizer(trainer), self.evaluator
        precision = self._precision(trainer)
        if ev.self_drift.enabled and ev.reference is None:
            with torch.no_grad():
                reference = ev.ensure_reference(model, tokenizer, precision)
            if trainer.is_global_zero:
                reference.save(self._run_dir(trainer) / REFERENCE_FILE)
        ev.prepare_kl_task(getattr(trainer, "datamodule", None), tokenizer)
        items = self._items(trainer, stage)
        if stage == "base":
            if ev.final is not None and not is_peft(model) and self._early_final_base is None:
                self._early_final_base = self._final_base(trainer, pl_module)
            return ev.evaluate_base(
                model, tokenizer, precision=precision, step=trainer.global_step, items=items
            )
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        return ev.evaluate(
            model,
            tokenizer,
            stage,
            precision=precision,
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            with_tasks=stage == "step" or last or ev.tasks.every_epoch,
            items=items,
        )

    def _final_base(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> EvalRecord:
        """The base at the final settings (cached across runs). A PEFT model gives its base with the
        adapters disabled at any time; a plain model only before training, so that is when it runs."""
        model, tokenizer, final = pl_module.model, self._tokenizer(trainer), self.evaluator.final
        precision = self._precision(trainer)
        final.prepare_kl_task(getattr(trainer, "datamodule", None), tokenizer)
        items = self._sink(trainer, FINAL_BASE_TAG)
        started = time.perf_counter()
        record = final.evaluate_base(
            model, tokenizer, precision=precision, step=trainer.global_step, items=items
        )
        seconds = {**record["seconds"], "eval": round(time.perf_counter() - started, 2)}
        return {**record, "stage": "final_base", "seconds": seconds}

    def _measure_final(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[EvalRecord]:
        """``eval.final``: the base and the trained model at the larger settings."""
        model, tokenizer, final = pl_module.model, self._tokenizer(trainer), self.evaluator.final
        precision = self._precision(trainer)
        base = self._early_final_base or self._final_base(trainer, pl_module)
        started = time.perf_counter()
        epoch = max(trainer.current_epoch - 1, 0)  # on_fit_end: the loop has counted past it
        items = self._sink(trainer, FINAL_TAG)
        record = final.evaluate(
            model, tokenizer, "final", precision=precision, epoch=epoch, step=trainer.global_step,
            items=items,
        )  # fmt: skip
        return [
            base,
            {**record, "seconds": {**record["seconds"], "eval": round(time.perf_counter() - started, 2)}},
        ]

    def _log_final(self, trainer: pl.Trainer) -> None:
        base, model = self.final_records
        metrics = flat_metrics(model["scores"], "final")
        metrics.update(flat_metrics(score_deltas(model["scores"], base["scores"]), "final_delta"))
        metrics.update(flat_metrics(model.get("tasks") or {}, "final_task"))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info("drift final: %s", json.dumps(score_deltas(model["scores"], base["scores"])))

    def _items(self, trainer: pl.Trainer, stage: str) -> ItemSink | None:
        """Where this evaluation's per-item results go (``<run>/eval_items/<base|epoch_n>/``)."""
        tag = {"base": "base", "step": step_tag(trainer.global_step)}.get(stage) or epoch_tag(
            trainer.current_epoch
        )
        return self._sink(trainer, tag)

    def _sink(self, trainer: pl.Trainer, tag: str) -> ItemSink | None:
        """The item files of one evaluation, written by rank 0 alone (``None`` on the others)."""
        return ItemSink(self._run_dir(trainer) / ITEMS_DIR, tag) if trainer.is_global_zero else None

    def _log(self, trainer: pl.Trainer, record: EvalRecord) -> None:
        metrics = flat_metrics(record["scores"], "drift")
        metrics.update(flat_metrics(record.get("tasks") or {}, "task"))
        if self.base_scores is not None and record["stage"] != "base":
            metrics.update(flat_metrics(score_deltas(record["scores"], self.base_scores), "drift_delta"))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                rows = table_rows(self.records)
                logger.log_table(
                    key="drift/table", columns=TABLE_COLUMNS, data=rows, step=trainer.global_step
                )
        if SELF_DRIFT_KEY in record["scores"]:
            log.info("drift %s: self_drift %s", record["stage"], record["scores"][SELF_DRIFT_KEY])

    def _final_payload(self) -> dict[str, Any]:
        base, model = self.final_records
        final = self.evaluator.final
        return {
            "settings": {
                "suite": asdict(final.suite),
                "self_drift": asdict(final.self_drift),
                "kl_task": asdict(final.kl_task.cfg),
                "ifeval": asdict(final.ifeval.cfg),
                **({"tasks": asdict(final.tasks)} if final.task_sets else {}),
            },
            "base": base,
            "model": {**model, "delta": score_deltas(model["scores"], base["scores"])},
        }

    def _write(self, trainer: pl.Trainer) -> Path:
        path = self._run_dir(trainer) / DRIFT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        base = self.base_scores
        epochs = [r for r in self.records if r["stage"] == "epoch"]
        steps = [r for r in self.records if r["stage"] == "step"]
        write_json(
            path,
            {
                "suite": asdict(self.evaluator.suite),
                "self_drift": asdict(self.evaluator.self_drift),
                "kl_task": asdict(self.evaluator.kl_task.cfg),
                "ifeval": asdict(self.evaluator.ifeval.cfg),
                "base": next((r for r in self.records if r["stage"] == "base"), None),
                "epochs": [{**r, "delta": score_deltas(r["scores"], base) if base else None} for r in epochs],
                **(
                    {
                        "steps": [
                            {**r, "delta": score_deltas(r["scores"], base) if base else None} for r in steps
                        ]
                    }
                    if steps
                    else {}
                ),
                **({"final": self._final_payload()} if self.final_records else {}),
            },
        )
        if any(r.get("tasks") for r in self.records):
            precision = self._precision(trainer)
            write_json(path.with_name(EVAL_FILE), eval_summary(self.records, precision=precision))
        return path
