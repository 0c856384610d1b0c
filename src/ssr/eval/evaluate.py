"""Suite + self-drift of a model in one call: a thin front of :class:`ssr.eval.evaluator.Evaluator`
kept for experiments/benchmarks (new code builds an ``Evaluator``)."""

from __future__ import annotations

from typing import Any

from ssr.data.prompts import PromptConfig
from ssr.eval.evaluator import SELF_DRIFT_KEY, Evaluator
from ssr.eval.items import ItemSink
from ssr.eval.self_drift import SelfDriftConfig, SelfDriftReference
from ssr.eval.suite import Scores, SuiteConfig
from ssr.eval.task_sets import TaskMetricsConfig
from ssr.runtime.precision import autocast_dtype

__all__ = ["SELF_DRIFT_KEY", "evaluate_model"]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    suite: SuiteConfig,
    self_drift: SelfDriftConfig,
    *,
    reference: SelfDriftReference | None = None,
    mixed_precision: Any = "auto",
    data_root: str | None = None,
    items: ItemSink | None = None,
) -> Scores:
    """``Evaluator.drift_scores`` of ``model`` (no task metrics)."""
    evaluator = Evaluator(suite, self_drift, TaskMetricsConfig(), PromptConfig(), {}, 1, data_root)
    evaluator.reference = reference
    model.eval()
    return evaluator.drift_scores(
        model, tokenizer, autocast_dtype(mixed_precision, next(model.parameters()).device.type), items
    )
