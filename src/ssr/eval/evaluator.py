"""One evaluation of a model: the lm-eval suite, self-drift, kl_task, IFEval and the grounded-QA task metrics.

The drift callback (base at fit start, then after epochs) and ``ssr-eval`` both call
:meth:`Evaluator.evaluate`, which returns one :data:`EvalRecord`; :func:`eval_summary` turns a
run's records into ``eval.json`` (one schema for both). One precision rule: every stage runs under
the autocast dtype of the ``precision`` setting it is given (:func:`ssr.runtime.precision.autocast_dtype`).

``eval.final`` (off by default) adds a second, larger evaluation of the base and of the trained
model after the last epoch (:attr:`Evaluator.final`): the same suite tasks at larger limits, more
self-drift prompts, kl_task rows and IFEval prompts (the published 541 at 1280 new tokens), and,
where ``eval.final.tasks`` is given, task metrics of their own (e.g. over-refusal on every
answerable out-of-domain row); the per-epoch ones run after the last epoch already.
Small per-epoch checks and one measurement that can resolve a few points: ssr-report's paired
statistics use the final one where a run has it.
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

from ssr.data.prompts import PromptConfig, prompt_token_budget
from ssr.data.records import Record
from ssr.eval.grounded import evaluate_grounded
from ssr.eval.ifeval import IFEVAL_KEY, IFEval, IFEvalConfig
from ssr.eval.items import LM_EVAL_PREFIX, ItemSink, lm_eval_rows
from ssr.eval.kl_task import KL_TASK_KEY, KLTask, KLTaskConfig
from ssr.eval.self_drift import (
    SelfDriftConfig,
    SelfDriftReference,
    base_weights,
    build_reference,
    self_drift_scores,
    weights_fingerprint,
)
from ssr.eval.suite import Scores, SuiteConfig, run_suite
from ssr.eval.task_sets import TaskMetricsConfig, task_sets
from ssr.generation.config import DecodingConfig
from ssr.models.logits import pad_token_id
from ssr.runtime.configs import checked_dataclass, plain_config
from ssr.runtime.distributed import active_shard
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root
from ssr.runtime.precision import autocast_dtype

log = logging.getLogger(__name__)

SELF_DRIFT_KEY = "self_drift"
FINAL_KEYS = ("suite", "self_drift", "kl_task", "ifeval", "tasks")  # what eval.final may override
# {"stage": "base"|"epoch"|"eval", "epoch", "step", "scores": {task: {metric: value}},
#  "tasks": {set: scores} (when task metrics ran), "seconds": {"drift", "tasks"}, "cached"?}
EvalRecord = dict[str, Any]


class Evaluator:
    """Suite + self-drift + task metrics of a model, with the base evaluation cached.

    ``task_sets``: held-out grounded-QA record sets (``in_domain``, ``ood_<name>``) scored with the
    task metrics; ``max_prompt_tokens``: the prompt budget of their questions (documents are cut);
    ``kl_task``: KL(pi0 || pi) on training prompts, whose rows come from the datamodule
    (:meth:`prepare_kl_task`). Every stage writes its per-item results to the ``items`` sink it is
    given (:mod:`ssr.eval.items`).
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
        kl_task: KLTaskConfig | None = None,
        ifeval: IFEvalConfig | None = None,
    ) -> None:
        self.suite, self.self_drift, self.tasks, self.prompt = suite, self_drift, tasks, prompt
        self.kl_task = KLTask(kl_task or KLTaskConfig(enabled=False))
        self.ifeval = IFEval(ifeval or IFEvalConfig(enabled=False), data_root, prompt.unanswerable_sentence)
        self.task_sets = {name: records for name, records in task_sets.items() if records}
        self.max_prompt_tokens, self.data_root, self.cache_base = max_prompt_tokens, data_root, cache_base
        self.reference: SelfDriftReference | None = None
        self.final: Evaluator | None = None  # eval.final: the larger evaluation after the last epoch

    @classmethod
    def from_settings(
        cls,
        *,
        suite: Any,
        self_drift: Any,
        tasks: Any,
        kl_task: Any,
        prompt: PromptConfig,
        max_length: int,
        data_root: str,
        val_records: list[Record],
        ood: dict[str, list[Record]],
        ifeval: Any = None,
        final: Any = None,
        callback: Any = None,
    ) -> Evaluator:
        """Built by ``instantiate(cfg.eval)`` (a ``_partial_`` node: ``conf/eval/default.yaml``
        interpolates ``prompt``, ``data.max_length`` and ``paths.data_root``); the recipe completes it
        with the run's records: the in-domain validation rows and the ``data.ood`` sets. ``callback``
        holds the drift callback's settings, of which the evaluator reads ``cache_base``."""
        shared = {
            "prompt": prompt,
            "data_root": str(Path(data_root).resolve()),
            "cache_base": bool(plain_config(callback or {}).get("cache_base", True)),
        }

        def with_tasks(node: Any, where: str) -> dict[str, Any]:  # the task metrics' settings + sets
            cfg = checked_dataclass(TaskMetricsConfig, node or {}, where)
            budget = cfg.max_prompt_tokens or prompt_token_budget(max_length, cfg.max_new_tokens)
            sets = task_sets(cfg, val_records, ood) if node is not None else {}
            return {"tasks": cfg, "max_prompt_tokens": budget, "task_sets": sets}

        evaluator = cls(
            suite=checked_dataclass(SuiteConfig, suite, "eval suite"),
            self_drift=checked_dataclass(SelfDriftConfig, self_drift, "self_drift"),
            kl_task=checked_dataclass(KLTaskConfig, kl_task, "eval.kl_task"),
            ifeval=checked_dataclass(IFEvalConfig, _ifeval_node(ifeval), "eval.ifeval"),
            **with_tasks(tasks, "eval.tasks"),
            **shared,
        )
        settings = final_settings(
            {"suite": suite, "self_drift": self_drift, "kl_task": kl_task, "ifeval": ifeval, "tasks": tasks,
             "final": final}
        )  # fmt: skip
        if settings is not None:
            evaluator.final = cls(
                suite=checked_dataclass(SuiteConfig, settings["suite"], "eval.final.suite"),
                self_drift=checked_dataclass(
                    SelfDriftConfig, settings["self_drift"], "eval.final.self_drift"
                ),
                kl_task=checked_dataclass(KLTaskConfig, settings["kl_task"], "eval.final.kl_task"),
                ifeval=checked_dataclass(IFEvalConfig, settings["ifeval"], "eval.final.ifeval"),
                **with_tasks(settings["tasks"], "eval.final.tasks"),
                **shared,
            )
        return evaluator

    @property
    def has_work(self) -> bool:
        return (
            bool(self.suite.tasks)
            or self.self_drift.enabled
            or self.ifeval.cfg.enabled
            or bool(self.task_sets)
        )

    # --- the stages -------------------------------------------------------------------------------
    def ensure_reference(self, model: Any, tokenizer: Any, dtype: torch.dtype | None) -> SelfDriftReference:
        """The self-drift reference (the base model's answers), built once."""
        if self.reference is None:
            self.reference = build_reference(model, tokenizer, self.self_drift, dtype)
        return self.reference

    def prepare_kl_task(self, datamodule: Any, tokenizer: Any) -> None:
        """The training prompts and the base model's own answers that ``kl_task`` scores (once),
        handed over by the DataModule (``own_answer_rows``: it owns the records, the prompt and the
        generation cache). In a multi-process run rank 0 asks for them and hands them to the others
        (which would otherwise each load the base model a second time)."""
        if not self.kl_task.enabled or self.kl_task.rows:
            return
        if not hasattr(datamodule, "own_answer_rows"):
            log.warning("drift: kl_task skipped (the datamodule hands over no own_answer_rows)")
            self.kl_task.cfg.enabled = False
            return
        max_rows = self.kl_task.cfg.max_rows
        ids, rows = active_shard().main_decides(lambda: datamodule.own_answer_rows(max_rows))
        self.kl_task.set_rows(ids, rows, pad_token_id(tokenizer))

    def drift_scores(
        self, model: Any, tokenizer: Any, dtype: torch.dtype | None, items: ItemSink | None = None
    ) -> Scores:
        """``{task_or_group: {metric: value}}`` plus ``{"self_drift": {"nll", "nll_increase", ...}}``
        and ``{"kl_task": {"kl", "n_rows"}}`` (when its rows are set)."""
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
                    on_samples=None
                    if items is None
                    else lambda task, samples: items.write(LM_EVAL_PREFIX + task, lm_eval_rows(samples)),
                )
            )
        if self.self_drift.enabled:
            ref = self.ensure_reference(model, tokenizer, dtype)
            scores[SELF_DRIFT_KEY] = self_drift_scores(
                model, tokenizer, ref, self.self_drift.batch_size, dtype, items=items
            )
        if self.kl_task.enabled and self.kl_task.rows:
            scores[KL_TASK_KEY] = self.kl_task.scores(model, dtype, items)
        return scores

    def task_scores(
        self, model: Any, tokenizer: Any, dtype: torch.dtype | None, items: ItemSink | None = None
    ) -> dict[str, Any]:
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
                items=items,
                items_source=name,
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
        items: ItemSink | None = None,
    ) -> EvalRecord:
        """One record: suite + self-drift scores, and task metrics when ``with_tasks``; in a
        multi-process evaluation also ``ranks``, the items each rank computed
        (:meth:`ssr.runtime.distributed.Shard.record`)."""
        dtype = autocast_dtype(precision, next(model.parameters()).device.type)
        model.eval()
        shard = active_shard()
        if stage != "base":  # the base's counts start with its references (evaluate_base)
            shard.counts.clear()
        started = time.perf_counter()
        with torch.no_grad():
            record: EvalRecord = {"stage": stage, "epoch": epoch, "step": step}
            record["scores"] = self.drift_scores(model, tokenizer, dtype, items)
            record["seconds"] = {"drift": round(time.perf_counter() - started, 2)}
            if self.ifeval.cfg.enabled:  # generated replies: its own cost line
                started = time.perf_counter()
                record["scores"][IFEVAL_KEY] = self.ifeval.scores(
                    model, tokenizer, dtype, items, base=stage == "base"
                )
                record["seconds"]["ifeval"] = round(time.perf_counter() - started, 2)
            if with_tasks and self.task_sets:
                started = time.perf_counter()
                record["tasks"] = self.task_scores(model, tokenizer, dtype, items)
                record["seconds"]["tasks"] = round(time.perf_counter() - started, 2)
        if shard.distributed:
            record["ranks"] = shard.record()
        return record

    def evaluate_base(
        self,
        model: Any,
        tokenizer: Any,
        *,
        precision: str | None,
        step: int = 0,
        items: ItemSink | None = None,
    ) -> EvalRecord:
        """The base weights' record (PEFT adapters disabled), reused from ``SSR_CACHE/drift_base``
        with its per-item results: every run of a sweep starts from the same base model, so it is
        computed once."""
        dtype = autocast_dtype(precision, next(model.parameters()).device.type)
        active_shard().counts.clear()
        with torch.no_grad():  # built from the base weights (adapters disabled) by build_reference
            reference = self.ensure_reference(model, tokenizer, dtype) if self.self_drift.enabled else None
            started = time.perf_counter()
            if self.ifeval.cfg.enabled:  # the base's replies, which later evaluations compare with
                self.ifeval.ensure_reference(model, tokenizer, dtype)
            replies_s = time.perf_counter() - started  # generated here (or read from SSR_CACHE)
        cache_file = cache_root() / "drift_base" / f"{self.base_key(model, tokenizer, reference, dtype)}.json"
        cached_items = cache_file.with_suffix(".items")
        shard = active_shard()  # rank 0 decides (and writes): every rank evaluates, or none
        cached = shard.main_decides(lambda: self._cached_base(cache_file, cached_items, items))
        if cached is not None:
            log.info("drift: base evaluation reused from %s", cache_file)
            record = {**cached, "step": step, "cached": True}
            if shard.distributed:  # no rank computed anything: say so, not the caching run's split
                record["ranks"] = {**shard.record(), "cached": True}
            return record
        with base_weights(model):
            record = self.evaluate(
                model, tokenizer, "base", precision=precision, epoch=-1, step=step, items=items
            )
        if "ifeval" in record["seconds"]:  # the base's IFEval cost includes generating its replies
            record["seconds"]["ifeval"] = round(record["seconds"]["ifeval"] + replies_s, 2)
        if self.cache_base and shard.is_main:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            if items is not None:
                items.copy_to(cached_items)
            # the scores of the base model, not how this run's ranks shared the work
            write_json(cache_file, {k: v for k, v in record.items() if k != "ranks"})
        return record

    def _cached_base(self, cache_file: Path, cached_items: Path, items: ItemSink | None) -> EvalRecord | None:
        """The cached base record (its items copied into ``items``), or ``None``."""
        if not (self.cache_base and cache_file.is_file() and (items is None or cached_items.is_dir())):
            return None
        with contextlib.suppress(ValueError, KeyError):
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
            if items is not None:
                items.copy_from(cached_items)
            return cached
        return None

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
            *([self.kl_task.key()] if self.kl_task.enabled else []),
            *([self.ifeval.key()] if self.ifeval.cfg.enabled else []),
        )


def final_settings(ev: Any) -> dict[str, Any] | None:
    """``eval.suite``/``self_drift``/``kl_task``/``ifeval``/``tasks`` with ``eval.final``'s keys on
    top (``None`` when ``eval.final.enabled`` is off). A mapping given there (``suite.limits``)
    replaces the per-epoch one whole: the final limits are not mixed with the per-epoch ones.
    ``tasks`` is ``None`` (no final task metrics) unless ``eval.final.tasks`` is given."""
    final = plain_config(ev.get("final"))
    if not final or not final.get("enabled", False):
        return None
    unknown = sorted(set(final) - {"enabled", *FINAL_KEYS})
    if unknown:
        raise KeyError(f"unknown eval.final keys {unknown} (known: {['enabled', *FINAL_KEYS]})")
    out: dict[str, Any] = {}
    for key in FINAL_KEYS:
        if key == "tasks" and final.get(key) is None:
            out[key] = None
            continue
        node = dict(plain_config(ev[key]) if key != "ifeval" else _ifeval_node(ev.get("ifeval")))
        node.update(plain_config(final.get(key)) or {})
        out[key] = node
    return out


def _ifeval_node(node: Any) -> dict[str, Any]:
    """``eval.ifeval`` (off where a saved config predates it)."""
    return plain_config(node) or {"enabled": False}


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
