"""Response-only tokenization (TRL-style): prompt prefix check, -100 masking, document truncation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from ssr.data.prompts import PromptConfig, build_messages, render_conversation, render_prompt
from ssr.records import Record

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

    The prompt (with the generation header) must tokenize to a prefix of the full conversation;
    everything after it (the response and the template's end-of-turn) is kept in the loss.
    """
    prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(render_conversation(tokenizer, messages, response), add_special_tokens=False)[
        "input_ids"
    ]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise PromptPrefixError(
            "prompt tokens are not a prefix of prompt+response tokens; "
            "the chat template rewrites earlier turns"
        )
    if len(full_ids) == len(prompt_ids):
        raise ValueError("empty response after tokenization")
    labels = [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :]
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
    if not record.document or record.messages is not None:
        return None
    doc_ids = tokenizer(record.document, add_special_tokens=False)["input_ids"]
    keep = len(doc_ids) - (len(ids) - max_length)
    while keep > 0:
        doc = tokenizer.decode(doc_ids[:keep]).rstrip() + " ..."
        ids, labels = tokenize_pair(tokenizer, build_messages(record, prompt_cfg, document=doc), response)
        if len(ids) <= max_length:
            return Tokenized(record.id, ids, labels, truncated_document=True)
        keep -= max(1, len(ids) - max_length)  # re-tokenization can merge/split a few tokens
    return None


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
