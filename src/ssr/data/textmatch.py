"""Answer normalisation and overlap scores (SQuAD-style), and unanswerable-response detection.

Shared by the rule judge and the task metrics so that both read answers the same way.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)

# Phrasings models use to decline; matched on normalised text. The configured unanswerable
# sentence is always checked first.
_REFUSAL_PATTERNS = [
    r"\b(can ?not|can't|unable to|not able to) (be )?(answer|determine|find|tell|say)",
    r"\b(does|do) not (contain|mention|provide|say|specify|include|state)",
    r"\b(is|are) not (mentioned|provided|specified|stated|given|included|available)",
    r"\bno (information|mention|details?)\b",
    r"\bnot (enough|sufficient) information\b",
    r"\bunanswerable\b",
]
_REFUSAL_RE = re.compile("|".join(_REFUSAL_PATTERNS))


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD's normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _overlap(candidate: str, reference: str) -> tuple[int, int, int]:
    cand = normalize_answer(candidate).split()
    ref = normalize_answer(reference).split()
    common = sum((Counter(cand) & Counter(ref)).values())
    return common, len(cand), len(ref)


def token_recall(candidate: str, reference: str) -> float:
    """Share of the reference's tokens found in the candidate (the SSR paper's answer metric)."""
    common, _, n_ref = _overlap(candidate, reference)
    if n_ref == 0:
        return float(not normalize_answer(candidate))
    return common / n_ref


def token_f1(candidate: str, reference: str) -> float:
    """SQuAD token F1."""
    common, n_cand, n_ref = _overlap(candidate, reference)
    if n_cand == 0 or n_ref == 0:
        return float(n_cand == n_ref)
    if common == 0:
        return 0.0
    precision, recall = common / n_cand, common / n_ref
    return 2 * precision * recall / (precision + recall)


def says_unanswerable(text: str, unanswerable_sentence: str) -> bool:
    """Whether a response declines to answer (the configured sentence or a common refusal)."""
    norm = normalize_answer(text)
    if not norm:
        return False
    target = normalize_answer(unanswerable_sentence)
    if target and target in norm:
        return True
    return bool(_REFUSAL_RE.search(text.lower()))
