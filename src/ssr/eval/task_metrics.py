"""Grounded-QA task metrics: unanswerable detection and answer overlap.

A prediction counts as "unanswerable" when :func:`ssr.data.textmatch.says_unanswerable` says so (the
configured unanswerable sentence or a common refusal). Answer quality is measured on answerable
rows only: token recall against the gold answer (the SSR paper's metric) and SQuAD token F1; the
share of them declined is the over-refusal (on an out-of-domain set of answerable questions: the
task's refusal spreading to questions it should answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ssr.data.textmatch import says_unanswerable, token_f1, token_recall

Gold = str | Sequence[str]


@dataclass(frozen=True)
class GroundedQAScores:
    """Counts and scores over one set of predictions (``nan`` where a score has no rows)."""

    n: int
    n_answerable: int
    n_unanswerable: int
    unanswerable_accuracy: float  # predicted-unanswerable == gold-unanswerable, over all rows
    unanswerable_precision: float
    unanswerable_recall: float
    unanswerable_f1: float
    answer_recall: float  # mean token recall on answerable rows
    answer_f1: float  # mean token F1 on answerable rows
    over_refusal: float  # share of answerable rows declined
    answered_recall: float  # mean token recall on the answerable rows answered (not declined)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _references(gold: Gold) -> list[str]:
    refs = [gold] if isinstance(gold, str) else list(gold)
    if not refs:
        raise ValueError("an answerable row needs at least one gold answer")
    return refs


def _ratio(num: Any, den: Any) -> np.ndarray:
    """``num / den`` elementwise, ``nan`` where ``den`` is 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def _precision_recall_f1(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise precision, recall and F1 of a positive class from (weighted) counts."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(
            tp > 0, 2 * precision * recall / (precision + recall), np.where(fp + fn > 0, 0.0, np.nan)
        )
    return precision, recall, f1


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of a positive class (``nan`` for an empty denominator)."""
    precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
    return float(precision), float(recall), float(f1)


def row_scores(prediction: str, gold: Gold, answerable: bool, unanswerable_sentence: str) -> dict[str, Any]:
    """One row's scores: whether it was refused and whether that was right; on answerable rows
    also the token recall and F1 against the best-matching gold answer."""
    refused = says_unanswerable(prediction, unanswerable_sentence)
    row: dict[str, Any] = {
        "answerable": answerable,
        "predicted_unanswerable": refused,
        "unanswerable_correct": float(refused == (not answerable)),
    }
    if answerable:
        row["over_refusal"] = float(refused)
        refs = _references(gold)
        row["answer_recall"] = max(token_recall(prediction, ref) for ref in refs)
        row["answer_f1"] = max(token_f1(prediction, ref) for ref in refs)
    return row


def grounded_qa_scores(
    rows: Iterable[tuple[str, Gold, bool]], unanswerable_sentence: str
) -> GroundedQAScores:
    """Score ``(prediction, gold, answerable)`` rows.

    ``gold`` may be one reference or several (the best-matching one counts). It is ignored on
    unanswerable rows.
    """
    return aggregate_row_scores([row_scores(p, g, a, unanswerable_sentence) for p, g, a in rows])


def aggregate_row_scores(scored: Sequence[Mapping[str, Any]]) -> GroundedQAScores:
    """The set's scores from :func:`row_scores` rows (or their stored ``eval_items`` rows)."""
    rates = weighted_scores(scored, np.ones(len(scored)))
    n_answerable = sum(bool(r["answerable"]) for r in scored)
    return GroundedQAScores(
        n=len(scored),
        n_answerable=n_answerable,
        n_unanswerable=len(scored) - n_answerable,
        **{name: float(value) for name, value in rates.items()},
    )


def weighted_scores(scored: Sequence[Mapping[str, Any]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """The :class:`GroundedQAScores` rates of the rows under each weighting of them (``weights``:
    ``(..., len(scored))``, e.g. bootstrap counts; all ones give :func:`aggregate_row_scores`)."""
    w = np.asarray(weights, dtype=float)
    answerable = np.array([bool(r["answerable"]) for r in scored], dtype=bool)
    declined = np.array([bool(r["predicted_unanswerable"]) for r in scored], dtype=bool)
    correct = np.array([float(r["unanswerable_correct"]) for r in scored])
    recall = np.array([float(r["answer_recall"]) if r["answerable"] else 0.0 for r in scored])
    f1 = np.array([float(r["answer_f1"]) if r["answerable"] else 0.0 for r in scored])
    tp, fp, fn = (
        w @ m.astype(float) for m in (declined & ~answerable, declined & answerable, ~declined & ~answerable)
    )
    n_answerable, answered = w @ answerable.astype(float), w @ (answerable & ~declined).astype(float)
    precision, unanswerable_recall, unanswerable_f1 = _precision_recall_f1(tp, fp, fn)
    return {
        "unanswerable_accuracy": _ratio(w @ correct, w.sum(axis=-1)),
        "unanswerable_precision": precision,
        "unanswerable_recall": unanswerable_recall,
        "unanswerable_f1": unanswerable_f1,
        "answer_recall": _ratio(w @ recall, n_answerable),
        "answer_f1": _ratio(w @ f1, n_answerable),
        "over_refusal": _ratio(fp, n_answerable),
        "answered_recall": _ratio(w @ (recall * ~declined), answered),
    }
