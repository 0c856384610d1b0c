"""Response-only tokenization (TRL-style): prompt prefix check, -100 masking, document truncation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from ssr.data.prompts import (
    PromptConfig,
    build_messages,
    fit_document,
    prompt_length,
    render_conversation,
    render_prompt,
)
from ssr.data.records import Record
from ssr.runtime.configs import ConfigError

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


class PromptPrefixError(ValueError):
    """The chat template renders the prompt differently once the response is appended."""


@dataclass
class Tokenized:
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated_document: bool = False
    answer_cut: bool = False  # extractive row: the gold answer was in the document, not in what is left

    @property
    def num_response_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenizeReport:
    kept: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)
    truncated_ids: list[str] = field(default_factory=list)  # documents cut to fit max_length
    answer_cut: list[str] = field(default_factory=list)  # ... past their gold answer


def shown_ids(ids: list[str], limit: int = 50) -> str:
    """Row ids for a log line (the first ``limit``, then how many more)."""
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def check_prompts_fit(
    tokenizer: PreTrainedTokenizerBase, records: list[Record], prompt_cfg: PromptConfig, max_length: int
) -> list[str]:
    """Before any generation: the ids of the rows whose prompt exceeds ``max_length`` even with the
    document cut to nothing (with room for one answer token); a :class:`ConfigError` when that is
    every row (no training row could be made)."""
    too_long: list[tuple[int, str]] = []
    for record in records:
        messages = build_messages(record, prompt_cfg, document="" if record.document else None)
        length = prompt_length(tokenizer, messages) + 1
        if length > max_length:
            too_long.append((length, record.id))
    if records and len(too_long) == len(records):
        shortest, row = min(too_long)
        raise ConfigError(
            f"data.max_length={max_length} is shorter than every prompt: the shortest, row {row!r} with "
            f"its document cut to nothing, needs {shortest} tokens with a one-token answer; raise data.max_length"
        )
    if too_long:
        log.warning(
            "%d/%d rows cannot fit data.max_length=%d even with no document; they will be dropped: %s",
            len(too_long),
            len(records),
            max_length,
            shown_ids([row for _, row in too_long]),
        )
    return [row for _, row in too_long]


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], response: str
) -> tuple[list[int], list[int]]:
    """Token ids of prompt+response and labels that mask the prompt with -100.

    The rendered prompt (with the generation header) must be a text prefix of the rendered
    conversation; the rest (the response and the template's end-of-turn) is tokenized on its own
    and kept in the loss. The prompt tokens are thus exactly those the model sees at generation
    time, even when the response starts with characters that would merge with the header's last
    token (a response starting with a newline).
    """
    prompt = render_prompt(tokenizer, messages)
    full = render_conversation(tokenizer, messages, response)
    if not full.startswith(prompt):
        raise PromptPrefixError(
            "the rendered prompt is not a prefix of the rendered prompt+response; "
            "the chat template rewrites earlier turns"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if not response_ids:
        raise ValueError("empty response after tokenization")
    full_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return full_ids, labels


def tokenize_record(
    tokenizer: PreTrainedTokenizerBase,
    record: Record,
    response: str,
    prompt_cfg: PromptConfig,
    max_length: int,
) -> Tokenized | None:
    """Tokenize one example; cut the document (never the response) to fit ``max_length``.

    Returns None when even an empty document leaves no room for the whole response.
    """
    messages = build_messages(record, prompt_cfg)
    ids, labels = tokenize_pair(tokenizer, messages, response)
    if len(ids) <= max_length:
        return Tokenized(record.id, ids, labels)
    fitted = fit_document(
        tokenizer, record, prompt_cfg, lambda m: len(tokenize_pair(tokenizer, m, response)[0]), max_length
    )
    if fitted is None:
        return None
    ids, labels = tokenize_pair(tokenizer, fitted, response)
    extractive = record.answerable and bool(record.gold) and record.gold in record.document
    kept = "\n".join(m["content"] for m in fitted)
    return Tokenized(
        record.id, ids, labels, truncated_document=True, answer_cut=extractive and record.gold not in kept
    )


def tokenize_all(
    tokenizer: PreTrainedTokenizerBase,
    records: list[Record],
    responses: list[str],
    prompt_cfg: PromptConfig,
    max_length: int,
) -> tuple[list[Tokenized], TokenizeReport]:
    """Tokenize many; rows that cannot fit are dropped with a counted warning; none left is an error."""
    report = TokenizeReport()
    out = []
    for record, response in zip(records, responses, strict=True):
        tok = tokenize_record(tokenizer, record, response, prompt_cfg, max_length)
        if tok is None:
            report.dropped.append(record.id)
            continue
        report.kept += 1
        report.truncated += tok.truncated_document
        if tok.truncated_document:
            report.truncated_ids.append(tok.id)
        if tok.answer_cut:
            report.answer_cut.append(tok.id)
        out.append(tok)
    if report.truncated_ids:
        log.info(
            "%d documents cut to fit max_length=%d: %s",
            report.truncated,
            max_length,
            shown_ids(report.truncated_ids),
        )
    if report.answer_cut:
        log.warning(
            "%d rows lost their gold answer when their document was cut to max_length=%d (the answer span "
            "is no longer in the prompt, yet it is the target): %s",
            len(report.answer_cut),
            max_length,
            shown_ids(report.answer_cut),
        )
    if report.dropped:
        log.warning(
            "dropped %d/%d rows whose response cannot fit in max_length=%d (e.g. %s)",
            len(report.dropped),
            len(records),
            max_length,
            report.dropped[:3],
        )
    if not out:
        raise ValueError(
            f"no training rows left: all {len(records)} responses exceed max_length={max_length}"
        )
    return out, report
