"""How the declines read: the replies each model declines with, per method and reply source.

The over-refusal and refusal-leak measures count declines; this reads them. For IFEval's replies
(general instructions, no document) and the answerable rows of each task set it gives the share
declined, the share of those declines that carry the task's configured unanswerable sentence
whole, and the commonest declining reply. A model that learned the task's refusal as a reflex
shows it here: the sentence, or a piece of it, in replies to prompts that have no document.

Replies are read from the runs' item files (``eval_items``) on the same pair of evaluations as
the other item-level tables (:func:`ssr.report.paired.pair_tags`: ``eval.final`` where the run
has the source, else the last epoch), pooled over a method's seeds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ssr.data.textmatch import normalize_answer
from ssr.eval.items import TASKS_PREFIX
from ssr.report.paired import Measure, pair_tags, run_items
from ssr.report.runs import config_value

IFEVAL_SOURCE = "ifeval"
# reply source -> (its 0/1 decline field, its reply field); task rows: the answerable ones only
DECLINE_FIELDS = {IFEVAL_SOURCE: ("refused", "response")}
TASK_DECLINE_FIELDS = ("over_refusal", "prediction")
SENTENCE_KEY = ("prompt", "unanswerable_sentence")


def _fields(source: str) -> tuple[str, str]:
    return DECLINE_FIELDS.get(source, TASK_DECLINE_FIELDS)


def _has_replies(run: Any, source: str) -> bool:
    """The run's final (or last-epoch) evaluation has ``source`` with reply text."""
    tag = pair_tags(run, Measure(source, (source,), "-"))[1]
    _, reply = _fields(source)
    return any(reply in row for row in run_items(run).get(tag, {}).get(source, {}).values())


def _reply_sources(run: Any) -> set[str]:
    """IFEval and the task sets whose final (or last-epoch) evaluation in ``run`` has reply text."""
    sources = {s for by_source in run_items(run).values() for s in by_source}
    return {s for s in sources if (s == IFEVAL_SOURCE or s.startswith(TASKS_PREFIX)) and _has_replies(run, s)}


def _declines(run: Any, source: str, base: bool) -> list[str | None]:
    """One reply per scored row of ``source`` on the run's final (or base) evaluation: the reply
    text where the row was declined, ``None`` where it was answered."""
    tag = pair_tags(run, Measure(source, (source,), "-"))[0 if base else 1]
    flag, reply = _fields(source)
    out: list[str | None] = []
    for row in run_items(run).get(tag, {}).get(source, {}).values():
        value = row.get(flag)
        if isinstance(value, bool | int | float):
            out.append(" ".join(str(row.get(reply, "")).split()) if value else None)
    return out


def _row(group: str, source: str, seeds: int, replies: list[str | None], sentence: str) -> dict[str, Any]:
    declined = [r for r in replies if r is not None]
    target = normalize_answer(sentence)
    top, top_n = Counter(declined).most_common(1)[0] if declined else (None, 0)
    return {
        "group": group,
        "source": source.removeprefix(TASKS_PREFIX),
        "seeds": seeds,
        "replies": len(replies),
        "declined": len(declined) / len(replies) if replies else None,
        "whole_sentence": (
            sum(bool(target) and target in normalize_answer(r) for r in declined) / len(declined)
            if declined
            else None
        ),
        "top_decline": top,
        "top_share": top_n / len(declined) if declined else None,
    }


def decline_rows(groups: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Per reply source (IFEval first, then the task sets) and group, after a ``base`` row from the
    base evaluation of the first run with the source: the replies scored (pooled over the seeds
    that have the source), the share declined, the share of the declines with the configured
    unanswerable sentence whole and the commonest declining reply with its share."""
    runs = [r for group in groups.values() for r in group]
    if not runs:
        return []
    sentence = str(config_value(runs[0].path, *SENTENCE_KEY) or "")
    have = {id(r): _reply_sources(r) for r in runs}
    out = []
    for source in sorted(set().union(*have.values()), key=lambda s: (s != IFEVAL_SOURCE, s)):
        having = [r for r in runs if source in have[id(r)]]
        out.append(_row("base", source, 1, _declines(having[0], source, base=True), sentence))
        for name, group in groups.items():
            mine = [r for r in group if source in have[id(r)]]
            replies = [reply for run in mine for reply in _declines(run, source, base=False)]
            out.append(_row(name, source, len(mine), replies, sentence))
    return [r for r in out if r["replies"]]
