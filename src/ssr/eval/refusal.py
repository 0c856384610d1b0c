"""Refusals in generated replies: the task's unanswerable sentence, or any refusal, and where it
leaks (a reply refuses where the base model's reply to the same prompt did not).

Measured on generations an evaluation already makes (IFEval replies; the grounded-QA task metrics
count over-refusal on answerable rows themselves, :mod:`ssr.eval.task_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ssr.data.textmatch import normalize_answer, says_unanswerable


def refusal_flags(text: str, unanswerable_sentence: str) -> dict[str, float]:
    """``refused``: the reply declines (the task's sentence or a common refusal,
    :func:`~ssr.data.textmatch.says_unanswerable`); ``task_sentence``: it contains the task's
    unanswerable sentence itself."""
    target = normalize_answer(unanswerable_sentence)
    return {
        "refused": float(says_unanswerable(text, unanswerable_sentence)),
        "task_sentence": float(bool(target) and target in normalize_answer(text)),
    }


def leaked(refused: Mapping[str, float], base_refused: Mapping[str, float]) -> dict[str, float]:
    """Per item id both have: 1.0 where the reply refuses and the base's reply did not."""
    return {i: float(bool(v) and not base_refused[i]) for i, v in refused.items() if i in base_refused}


def share(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
