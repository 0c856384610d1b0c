"""Response-only tokenization (TRL-style): prompt prefix check, -100 masking, document truncation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from ssr.data.prompts import (
    PromptConfig,
    build_messages,
    fit_document,
    render_conversation,
    render_prompt,
)
from ssr.data.records import Record

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

    @property
    def num_response_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class TokenizeReport:
    kept: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)


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
    return Tokenized(record.id, ids, labels, truncated_document=True)


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
        out.append(tok)
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
