"""Lightning callback: evaluate the base model at fit start and the model after every epoch.

Scores come from :func:`ssr.eval.evaluate.evaluate_model` (the lm-eval suite + self-drift) and
:mod:`ssr.eval.kl_task` (KL(pi0 || pi) on the training prompts); per-item results go to
``<run>/eval_items/<base|epoch_n>/`` (:mod:`ssr.eval.items`). Each
evaluation is logged to every logger as ``drift/<task>/<metric>`` (absolute) and
``drift_delta/<task>/<metric>`` (minus the base score), as a W&B table for W&B loggers, and
appended to ``drift.json`` in the run directory::

    {"suite": {...}, "self_drift": {...}, "kl_task": {...},
     "base": {"stage": "base", "epoch": -1, "step": 0, "scores": {task: {metric: value}}},
     "epochs": [{"stage": "epoch", "epoch": 0, "step": 40, "scores": {...}, "delta": {...}}, ...]}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from ssr.eval.evaluate import SELF_DRIFT_KEY, evaluate_model
from ssr.eval.items import ITEMS_DIR, ItemSink, epoch_tag
from ssr.eval.kl_task import KL_TASK_KEY, KLTask, KLTaskConfig, own_answer_rows
from ssr.eval.self_drift import (
    SelfDriftConfig,
    SelfDriftReference,
    base_weights,
    build_reference,
    weights_fingerprint,
)
from ssr.eval.suite import Scores, SuiteConfig
from ssr.files import atomic_write_text
from ssr.paths import cache_root
from ssr.precision import trainer_autocast
from ssr.records import content_hash
from ssr.rng import rng_states, set_rng_states

log = logging.getLogger(__name__)

DRIFT_FILE = "drift.json"
EVAL_FILE = "eval.json"
REFERENCE_FILE = "self_drift_reference.json"
TABLE_COLUMNS = ["stage", "epoch", "step", "task", "metric", "value", "base", "delta"]


# --- state that evaluation must not disturb -------------------------------------------------------


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


# --- helpers ---------------------------------------------------------------------------------------


def flat_metrics(scores: Scores, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{task}/{metric}": value
        for task, metrics in scores.items()
        for metric, value in metrics.items()
    }


def score_deltas(scores: Scores, base: Scores) -> Scores:
    """``scores - base`` for every (task, metric) present in both."""
    return {
        task: {m: v - base[task][m] for m, v in metrics.items() if m in base.get(task, {})}
        for task, metrics in scores.items()
        if task in base
    }


def table_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per (record, task, metric) with its base value and delta (for a W&B table)."""
    base = next((r["scores"] for r in records if r["stage"] == "base"), {})
    rows = []
    for record in records:
        for task, metrics in record["scores"].items():
            for metric, value in metrics.items():
                ref = base.get(task, {}).get(metric, math.nan)
                rows.append(
                    [record["stage"], record["epoch"], record["step"], task, metric, value, ref, value - ref]
                )
    return rows


def _is_zero3(strategy: Any) -> bool:
    config = getattr(strategy, "config", None)
    return isinstance(config, dict) and config.get("zero_optimization", {}).get("stage") == 3


class GeneralizationDriftCallback(pl.Callback):
    """Track generalisation drift during fine-tuning (base at fit start, then every n epochs).

    Args:
        suite: lm-eval suite settings (``SuiteConfig`` or a mapping like ``conf/eval/suite/*.yaml``).
        self_drift: self-drift settings (``SelfDriftConfig`` or a mapping); ``None`` disables it.
        tokenizer: the model's tokenizer; default ``trainer.datamodule.tokenizer``.
        every_n_epochs: evaluate after every n-th training epoch.
        run_dir: where ``drift.json`` goes; default ``trainer.default_root_dir``.
        mixed_precision: ``auto`` follows the trainer (``bf16-mixed`` -> bf16 autocast), or
            ``bf16``/``fp16``/``none``.
        enabled: ``False`` turns the callback into a no-op (``eval.callback.enabled``).
        cache_base: reuse the base evaluation from ``SSR_CACHE/drift_base`` (keyed by the base
            weights and every setting that decides the scores), so a sweep evaluates the base once.
        task_sets: grounded-QA record sets (e.g. ``in_domain``, ``ood_quac``) scored with the task
            metrics at fit start and after the last epoch (every epoch with ``task_every_epoch``);
            base and final scores also go to ``eval.json``.
        prompt: the ``PromptConfig`` used to ask the task questions.
    """

    def __init__(
        self,
        suite: SuiteConfig | Mapping[str, Any] | None = None,
        self_drift: SelfDriftConfig | Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        every_n_epochs: int = 1,
        run_dir: str | os.PathLike | None = None,
        mixed_precision: str | None = "auto",
        data_root: str | None = None,
        enabled: bool = True,
        task_sets: Mapping[str, list[Any]] | None = None,
        prompt: Any = None,
        task_every_epoch: bool = False,
        task_max_new_tokens: int = 64,
        task_max_prompt_tokens: int | None = None,
        cache_base: bool = True,
        kl_task: KLTaskConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.suite = SuiteConfig.from_mapping(suite)
        self.self_drift = SelfDriftConfig.from_mapping(self_drift)
        self.tokenizer = tokenizer
        self.every_n_epochs = every_n_epochs
        self.run_dir = Path(run_dir) if run_dir else None
        self.mixed_precision = mixed_precision
        self.data_root = data_root
        self.active = enabled
        self.records: list[dict[str, Any]] = []
        self.reference: SelfDriftReference | None = None
        self.task_sets = dict(task_sets or {})
        self.prompt = prompt
        self.task_every_epoch = task_every_epoch
        self.task_max_new_tokens = task_max_new_tokens
        self.task_max_prompt_tokens = task_max_prompt_tokens
        self.cache_base = cache_base
        self.kl_task = KLTask(kl_task)
        self._epoch_started: float | None = None

    @classmethod
    def from_config(
        cls, eval_cfg: Mapping[str, Any], tokenizer: Any = None, **overrides: Any
    ) -> GeneralizationDriftCallback:
        """Build from the ``eval`` config group (``suite``, ``self_drift``, ``callback`` keys)."""
        callback_cfg = dict(eval_cfg.get("callback") or {})
        return cls(
            suite=eval_cfg.get("suite"),
            self_drift=eval_cfg.get("self_drift"),
            kl_task=eval_cfg.get("kl_task"),
            tokenizer=tokenizer,
            **{**callback_cfg, **overrides},
        )

    @property
    def enabled(self) -> bool:
        return self.active and (bool(self.suite.tasks) or self.self_drift.enabled or bool(self.task_sets))

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

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._evaluate(trainer, pl_module, "epoch")

    def state_dict(self) -> dict[str, Any]:
        ref = self.reference.__dict__ if self.reference is not None else None
        return {"records": self.records, "reference": ref}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        ref = state_dict.get("reference")
        self.reference = SelfDriftReference(**ref) if ref else None

    # --- evaluation -------------------------------------------------------------------------------

    def _tokenizer(self, trainer: pl.Trainer) -> Any:
        tokenizer = self.tokenizer or getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "GeneralizationDriftCallback needs a tokenizer: pass tokenizer= or give the "
                "datamodule a .tokenizer attribute"
            )
        return tokenizer

    def _run_dir(self, trainer: pl.Trainer) -> Path:
        return self.run_dir or Path(trainer.default_root_dir)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        if _is_zero3(trainer.strategy):
            log.warning("drift: skipped under DeepSpeed ZeRO-3 (parameters are sharded across ranks)")
            return
        trainer.strategy.barrier("ssr_drift_start")
        if trainer.is_global_zero:
            # the epoch's wall time so far (training + validation), before this evaluation
            epoch_seconds = (
                time.perf_counter() - self._epoch_started
                if stage != "base" and self._epoch_started is not None
                else None
            )
            started = time.perf_counter()
            record = self._measure(trainer, pl_module, stage)
            # eval = everything this evaluation took; drift = suite + self-drift; tasks = task metrics
            record.setdefault("seconds", {})["eval"] = round(time.perf_counter() - started, 2)
            if epoch_seconds is not None:
                record["seconds"]["epoch"] = round(epoch_seconds, 2)
            self.records.append(record)
            self._log(trainer, record)
            self._write(trainer)
        trainer.strategy.barrier("ssr_drift_end")

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, Any]:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "GeneralizationDriftCallback expects the Hugging Face model (or its PEFT wrapper) "
                f"at pl_module.model; {type(pl_module).__name__} has none"
            )
        tokenizer = self._tokenizer(trainer)
        precision = trainer_autocast(trainer) if self.mixed_precision == "auto" else self.mixed_precision
        with preserved_state(pl_module), torch.no_grad():
            if self.self_drift.enabled and self.reference is None:
                self.reference = build_reference(model, tokenizer, self.self_drift, precision)
                self.reference.save(self._run_dir(trainer) / REFERENCE_FILE)
            self._prepare_kl_task(trainer, tokenizer)
            if stage == "base":
                return self._measure_base(trainer, model, tokenizer, precision)
            last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
            return self._scores_record(
                trainer, model, tokenizer, precision, "epoch", with_tasks=last_epoch or self.task_every_epoch
            )

    def _scores_record(
        self,
        trainer: pl.Trainer,
        model: torch.nn.Module,
        tokenizer: Any,
        precision: str | None,
        stage: str,
        with_tasks: bool,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        items = self._items(trainer, stage)
        scores = evaluate_model(
            model,
            tokenizer,
            self.suite,
            self.self_drift,
            reference=self.reference,
            mixed_precision=precision,
            data_root=self.data_root,
            items=items,
        )
        if self.kl_task.enabled and self.kl_task.rows:
            scores[KL_TASK_KEY] = self.kl_task.scores(model, precision, items)
        seconds = {"drift": round(time.perf_counter() - started, 2)}
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": trainer.current_epoch if stage != "base" else -1,
            "step": trainer.global_step,
            "scores": scores,
            "seconds": seconds,
        }
        if with_tasks and self.task_sets:
            started = time.perf_counter()
            record["tasks"] = self._task_scores(model, tokenizer, precision, items)
            seconds["tasks"] = round(time.perf_counter() - started, 2)
        return record

    def _measure_base(
        self, trainer: pl.Trainer, model: torch.nn.Module, tokenizer: Any, precision: str | None
    ) -> dict[str, Any]:
        """Scores of the base weights (PEFT adapters disabled), reused from ``SSR_CACHE/drift_base``.

        Every run of a sweep starts from the same base model, so its evaluation is computed once;
        the key covers the base weights and everything that decides the scores.
        """
        key = content_hash(
            weights_fingerprint(model),
            self.suite.__dict__,
            {k: v for k, v in self.self_drift.__dict__.items() if k not in ("cache", "batch_size")},
            self.reference.base_nll if self.reference is not None else None,
            str(precision),
            getattr(tokenizer, "chat_template", None),
            {name: [r.to_dict() for r in records] for name, records in self.task_sets.items()},
            self.prompt.__dict__ if hasattr(self.prompt, "__dict__") else self.prompt,
            self.task_max_new_tokens,
            self.task_max_prompt_tokens,
            self.data_root,
            *([self.kl_task.key()] if self.kl_task.enabled else []),
        )
        cache_file = cache_root() / "drift_base" / f"{key}.json"
        cached_items = cache_file.with_suffix(".items")  # per-item results of the base evaluation
        if self.cache_base and cache_file.is_file() and cached_items.is_dir():
            with contextlib.suppress(ValueError, KeyError):
                cached = json.loads(cache_file.read_text(encoding="utf-8"))
                self._items(trainer, "base").copy_from(cached_items)
                log.info("drift: base evaluation reused from %s", cache_file)
                return {**cached, "step": trainer.global_step, "cached": True}
        with base_weights(model):
            record = self._scores_record(trainer, model, tokenizer, precision, "base", with_tasks=True)
        if self.cache_base:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            self._items(trainer, "base").copy_to(cached_items)
            _write_json(cache_file, record)
        return record

    def _prepare_kl_task(self, trainer: pl.Trainer, tokenizer: Any) -> None:
        """The training prompts and the base model's own answers that ``kl_task`` scores (once)."""
        if not self.kl_task.enabled or self.kl_task.rows:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not hasattr(datamodule, "train_records"):
            log.warning("drift: kl_task skipped (the datamodule has no train_records)")
            self.kl_task.cfg.enabled = False
            return
        ids, rows = own_answer_rows(datamodule, self.kl_task.cfg.max_rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.kl_task.set_rows(ids, rows, pad)

    def _items(self, trainer: pl.Trainer, stage: str) -> ItemSink:
        """Where this evaluation's per-item results go (``<run>/eval_items/<base|epoch_n>/``)."""
        tag = "base" if stage == "base" else epoch_tag(trainer.current_epoch)
        return ItemSink(self._run_dir(trainer) / ITEMS_DIR, tag)

    def _task_scores(
        self, model: torch.nn.Module, tokenizer: Any, precision: str | None, items: ItemSink | None = None
    ) -> dict[str, Any]:
        from ssr.eval.grounded import evaluate_grounded
        from ssr.generation import DecodingConfig

        decoding = DecodingConfig(max_new_tokens=self.task_max_new_tokens)
        return {
            name: evaluate_grounded(
                model,
                tokenizer,
                records,
                self.prompt,
                decoding,
                max_prompt_tokens=self.task_max_prompt_tokens,
                precision=precision,
                items=items,
                items_source=name,
            )[0]
            for name, records in self.task_sets.items()
            if records
        }

    def _log(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        metrics = flat_metrics(record["scores"], "drift")
        if record.get("tasks"):
            metrics.update(flat_metrics(record["tasks"], "task"))
        base = self.base_scores
        if base is not None and record["stage"] != "base":
            metrics.update(flat_metrics(score_deltas(record["scores"], base), "drift_delta"))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="drift/table",
                    columns=TABLE_COLUMNS,
                    data=table_rows(self.records),
                    step=trainer.global_step,
                )
        if SELF_DRIFT_KEY in record["scores"]:
            log.info("drift %s: self_drift %s", record["stage"], record["scores"][SELF_DRIFT_KEY])

    def _write(self, trainer: pl.Trainer) -> Path:
        path = self._run_dir(trainer) / DRIFT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        base = self.base_scores
        payload = {
            "suite": self.suite.__dict__,
            "self_drift": self.self_drift.__dict__,
            "kl_task": self.kl_task.cfg.__dict__,
            "base": next((r for r in self.records if r["stage"] == "base"), None),
            "epochs": [
                {**r, "delta": score_deltas(r["scores"], base) if base is not None else None}
                for r in self.records
                if r["stage"] != "base"
            ],
        }
        _write_json(path, payload)
        with_tasks = [r for r in self.records if r.get("tasks")]
        if with_tasks:
            base_tasks = next((r["tasks"] for r in with_tasks if r["stage"] == "base"), None)
            final = next((r for r in reversed(with_tasks) if r["stage"] != "base"), None)
            _write_json(
                path.with_name(EVAL_FILE),
                {
                    "base": {"tasks": base_tasks} if base_tasks else {},
                    "final": {"tasks": final["tasks"], "epoch": final["epoch"]} if final else {},
                },
            )
        return path


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))
