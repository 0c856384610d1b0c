"""Grounded-QA task metrics: unanswerable detection and answer overlap.

A prediction counts as "unanswerable" when :func:`ssr.data.textmatch.says_unanswerable` says so (the
configured unanswerable sentence or a common refusal). Answer quality is measured on answerable
rows only: token recall against the gold answer (the SSR paper's metric) and SQuAD token F1; the
share of them declined is the over-refusal (on an out-of-domain set of answerable questions: the
task's refusal spreading to questions it should answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of a positive class (``nan`` for an empty denominator)."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    if tp == 0:
        f1 = 0.0 if (fp or fn) else float("nan")
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


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


def aggregate_row_scores(scored: Sequence[dict[str, Any]]) -> GroundedQAScores:
    """The set's scores from :func:`row_scores` rows."""
    tp = sum(r["predicted_unanswerable"] and not r["answerable"] for r in scored)
    fp = sum(r["predicted_unanswerable"] and r["answerable"] for r in scored)
    fn = sum(not r["predicted_unanswerable"] and not r["answerable"] for r in scored)
    correct = sum(r["unanswerable_correct"] for r in scored)
    n = len(scored)
    recalls = [r["answer_recall"] for r in scored if r["answerable"]]
    f1s = [r["answer_f1"] for r in scored if r["answerable"]]
    answered = [r["answer_recall"] for r in scored if r["answerable"] and not r["predicted_unanswerable"]]
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    n_answerable = len(recalls)
    return GroundedQAScores(
        n=n,
        n_answerable=n_answerable,
        n_unanswerable=n - n_answerable,
        unanswerable_accuracy=_ratio(correct, n),
        unanswerable_precision=precision,
        unanswerable_recall=recall,
        unanswerable_f1=f1,
        answer_recall=_ratio(sum(recalls), n_answerable),
        answer_f1=_ratio(sum(f1s), n_answerable),
        over_refusal=_ratio(fp, n_answerable),
        answered_recall=_ratio(sum(answered), len(answered)),
    )
