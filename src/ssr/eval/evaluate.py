"""One call that evaluates a model on a suite and on self-drift (used by ``ssr-eval`` and the callback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ssr.eval.items import LM_EVAL_PREFIX, ItemSink, lm_eval_rows
from ssr.eval.self_drift import SelfDriftConfig, SelfDriftReference, build_reference, self_drift_scores
from ssr.eval.suite import Scores, SuiteConfig, run_suite
from ssr.precision import autocast_dtype

SELF_DRIFT_KEY = "self_drift"


def evaluate_model(
    model: Any,
    tokenizer: Any,
    suite_cfg: SuiteConfig | Mapping[str, Any] | None,
    self_drift_cfg: SelfDriftConfig | Mapping[str, Any] | None,
    *,
    reference: SelfDriftReference | None = None,
    mixed_precision: str | torch.dtype | None = "auto",
    data_root: str | None = None,
    items: ItemSink | None = None,
) -> Scores:
    """``{task_or_group: {metric: value}}`` plus ``{"self_drift": {"nll", "nll_increase", ...}}``.

    The model is put in eval mode and run under ``torch.no_grad``; ``mixed_precision`` is an
    :mod:`ssr.precision` setting (``auto`` resolves to bf16 only where it is measured faster). Without a ``reference`` the
    self-drift reference is built from ``self_drift_cfg`` (``reference_path``, the cache, or the
    base model's answers, with PEFT adapters disabled). ``items`` gets the per-item results
    (lm-eval documents, self-drift prompts) as each source finishes.
    """
    suite = SuiteConfig.from_mapping(suite_cfg)
    drift = SelfDriftConfig.from_mapping(self_drift_cfg)
    model.eval()
    mixed_precision = autocast_dtype(mixed_precision, next(model.parameters()).device.type)
    scores: Scores = {}
    with torch.no_grad():
        if suite.tasks:
            scores.update(
                run_suite(
                    model,
                    tokenizer,
                    suite.tasks,
                    limits=suite.limits,
                    num_fewshot=suite.num_fewshot,
                    batch_size=suite.batch_size,
                    bootstrap_iters=0,
                    mixed_precision=mixed_precision,
                    apply_chat_template=suite.apply_chat_template,
                    max_length=suite.max_length,
                    data_root=data_root,
                    on_samples=None
                    if items is None
                    else lambda task, samples: items.write(LM_EVAL_PREFIX + task, lm_eval_rows(samples)),
                )
            )
        if drift.enabled:
            ref = reference or build_reference(model, tokenizer, drift, mixed_precision)
            scores[SELF_DRIFT_KEY] = self_drift_scores(
                model, tokenizer, ref, drift.batch_size, mixed_precision, items=items
            )
    return scores
