"""One evaluation of a model: the lm-eval suite, self-drift and the grounded-QA task metrics.

The drift callback (base at fit start, then after epochs) and ``ssr-eval`` both call
:meth:`Evaluator.evaluate`, which returns one :data:`EvalRecord`; :func:`eval_summary` turns a
run's records into ``eval.json`` (one schema for both). One precision rule: every stage runs under
the autocast dtype of the ``precision`` setting it is given (:func:`ssr.precision.autocast_dtype`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ssr.data.prompts import PromptConfig, prompt_token_budget
from ssr.eval.grounded import evaluate_grounded
from ssr.eval.self_drift import (
    SelfDriftConfig,
    SelfDriftReference,
    base_weights,
    build_reference,
    self_drift_scores,
    weights_fingerprint,
)
from ssr.eval.suite import Scores, SuiteConfig, checked_dataclass, run_suite
from ssr.eval.task_sets import TaskMetricsConfig, task_sets
from ssr.files import atomic_write_text
from ssr.generation import DecodingConfig
from ssr.paths import cache_root
from ssr.precision import autocast_dtype
from ssr.records import Record, content_hash

log = logging.getLogger(__name__)

SELF_DRIFT_KEY = "self_drift"
# {"stage": "base"|"epoch"|"eval", "epoch", "step", "scores": {task: {metric: value}},
#  "tasks": {set: scores} (when task metrics ran), "seconds": {"drift", "tasks"}, "cached"?}
EvalRecord = dict[str, Any]


class Evaluator:
    """Suite + self-drift + task metrics of a model, with the base evaluation cached.

    ``task_sets``: held-out grounded-QA record sets (``in_domain``, ``ood_<name>``) scored with the
    task metrics; ``max_prompt_tokens``: the prompt budget of their questions (documents are cut).
    """

    def __init__(
        self,
        suite: SuiteConfig,
        self_drift: SelfDriftConfig,
        tasks: TaskMetricsConfig,
        prompt: PromptConfig,
        task_sets: dict[str, list[Record]],
        max_prompt_tokens: int,
        data_root: str | None = None,
        cache_base: bool = True,
    ) -> None:
        self.suite, self.self_drift, self.tasks, self.prompt = suite, self_drift, tasks, prompt
        self.task_sets = {name: records for name, records in task_sets.items() if records}
        self.max_prompt_tokens, self.data_root, self.cache_base = max_prompt_tokens, data_root, cache_base
        self.reference: SelfDriftReference | None = None

    @classmethod
    def from_config(
        cls, cfg: DictConfig, val_records: list[Record], ood: dict[str, list[Record]] | None = None
    ) -> Evaluator:
        """From the composed run config: ``eval`` (suite, self_drift, tasks, callback.cache_base),
        ``prompt``, ``data`` (``max_length`` and the ``ood`` sets) and ``paths.data_root``."""
        from hydra.utils import instantiate

        ev = cfg.eval
        tasks = checked_dataclass(TaskMetricsConfig, ev.tasks, "eval.tasks")
        budget = tasks.max_prompt_tokens or prompt_token_budget(cfg.data.max_length, tasks.max_new_tokens)
        return cls(
            suite=checked_dataclass(SuiteConfig, ev.suite, "eval suite"),
            self_drift=checked_dataclass(SelfDriftConfig, ev.self_drift, "self_drift"),
            tasks=tasks,
            prompt=instantiate(cfg.prompt),
            task_sets=task_sets(cfg, val_records, ood),
            max_prompt_tokens=budget,
            data_root=str(Path(cfg.paths.data_root).resolve()),
            cache_base=ev.callback.cache_base,
        )

    @property
    def has_work(self) -> bool:
        return bool(self.suite.tasks) or self.self_drift.enabled or bool(self.task_sets)

    # --- the stages -------------------------------------------------------------------------------
    def ensure_reference(self, model: Any, tokenizer: Any, dtype: torch.dtype | None) -> SelfDriftReference:
        """The self-drift reference (the base model's answers), built once."""
        if self.reference is None:
            self.reference = build_reference(model, tokenizer, self.self_drift, dtype)
        return self.reference

    def drift_scores(self, model: Any, tokenizer: Any, dtype: torch.dtype | None) -> Scores:
        """``{task_or_group: {metric: value}}`` plus ``{"self_drift": {"nll", "nll_increase", ...}}``."""
        scores: Scores = {}
        if self.suite.tasks:
            scores.update(
                run_suite(
                    model,
                    tokenizer,
                    self.suite.tasks,
                    limits=self.suite.limits,
                    num_fewshot=self.suite.num_fewshot,
                    batch_size=self.suite.batch_size,
                    bootstrap_iters=0,
                    mixed_precision=dtype,
                    apply_chat_template=self.suite.apply_chat_template,
                    max_length=self.suite.max_length,
                    data_root=self.data_root,
                )
            )
        if self.self_drift.enabled:
            ref = self.ensure_reference(model, tokenizer, dtype)
            scores[SELF_DRIFT_KEY] = self_drift_scores(
                model, tokenizer, ref, self.self_drift.batch_size, dtype
            )
        return scores

    def task_scores(self, model: Any, tokenizer: Any, dtype: torch.dtype | None) -> dict[str, Any]:
        """Grounded-QA task metrics per held-out set."""
        decoding = DecodingConfig(max_new_tokens=self.tasks.max_new_tokens)
        return {
            name: evaluate_grounded(
                model,
                tokenizer,
                records,
                self.prompt,
                decoding,
                max_prompt_tokens=self.max_prompt_tokens,
                precision=dtype,
            )[0]
            for name, records in self.task_sets.items()
        }

    # --- one evaluation ---------------------------------------------------------------------------
    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        stage: str,
        *,
        precision: str | None,
        epoch: int | None = None,
        step: int = 0,
        with_tasks: bool = True,
    ) -> EvalRecord:
        """One record: suite + self-drift scores, and task metrics when ``with_tasks``."""
        dtype = autocast_dtype(precision, next(model.parameters()).device.type)
        model.eval()
        started = time.perf_counter()
        with torch.no_grad():
            record: EvalRecord = {"stage": stage, "epoch": epoch, "step": step}
            record["scores"] = self.drift_scores(model, tokenizer, dtype)
            record["seconds"] = {"drift": round(time.perf_counter() - started, 2)}
            if with_tasks and self.task_sets:
                started = time.perf_counter()
                record["tasks"] = self.task_scores(model, tokenizer, dtype)
                record["seconds"]["tasks"] = round(time.perf_counter() - started, 2)
        return record

    def evaluate_base(
        self, model: Any, tokenizer: Any, *, precision: str | None, step: int = 0
    ) -> EvalRecord:
        """The base weights' record (PEFT adapters disabled), reused from ``SSR_CACHE/drift_base``:
        every run of a sweep starts from the same base model, so it is computed once."""
        dtype = autocast_dtype(precision, next(model.parameters()).device.type)
        with torch.no_grad():  # built from the base weights (adapters disabled) by build_reference
            reference = self.ensure_reference(model, tokenizer, dtype) if self.self_drift.enabled else None
        cache_file = cache_root() / "drift_base" / f"{self.base_key(model, tokenizer, reference, dtype)}.json"
        if self.cache_base and cache_file.is_file():
            with contextlib.suppress(ValueError, KeyError):
                cached = json.loads(cache_file.read_text(encoding="utf-8"))
                log.info("drift: base evaluation reused from %s", cache_file)
                return {**cached, "step": step, "cached": True}
        with base_weights(model):
            record = self.evaluate(model, tokenizer, "base", precision=precision, epoch=-1, step=step)
        if self.cache_base:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache_file, record)
        return record

    def base_key(
        self, model: Any, tokenizer: Any, reference: SelfDriftReference | None, dtype: torch.dtype | None
    ) -> str:
        """Everything that decides the base scores: weights, every setting, the held-out items."""
        return content_hash(
            weights_fingerprint(model),
            asdict(self.suite),
            {k: v for k, v in asdict(self.self_drift).items() if k not in ("cache", "batch_size")},
            reference.base_nll if reference is not None else None,
            str(dtype),
            getattr(tokenizer, "chat_template", None),
            {name: [r.to_dict() for r in records] for name, records in self.task_sets.items()},
            asdict(self.prompt),
            self.tasks.max_new_tokens,
            self.max_prompt_tokens,
            self.data_root,
        )


def eval_summary(records: list[EvalRecord], **about: Any) -> dict[str, Any]:
    """``eval.json``: ``about`` (model, adapter, precision), the base and the last task metrics
    (``{"tasks", "epoch"}``) and the base and last suite + self-drift scores (``suite``)."""
    base = next((r for r in records if r["stage"] == "base"), None)
    evaluated = [r for r in records if r["stage"] != "base"]
    tasks = [r for r in evaluated if r.get("tasks")]
    return {
        **about,
        "base": {"tasks": base["tasks"]} if base and base.get("tasks") else {},
        "final": {"tasks": tasks[-1]["tasks"], "epoch": tasks[-1]["epoch"]} if tasks else {},
        "suite": {
            "base": base["scores"] if base else None,
            "final": evaluated[-1]["scores"] if evaluated else None,
        },
    }


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))
