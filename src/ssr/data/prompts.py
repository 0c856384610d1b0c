"""Grounded-QA prompt: instruction, document, question; rendered with the tokenizer's chat template."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ssr.data.records import Record

DEFAULT_UNANSWERABLE = "I cannot answer this question based on the provided document."
DEFAULT_TEMPLATE = (
    "Answer the question using only the document below. If the document does not contain the "
    'answer, reply exactly: "{unanswerable}"\n\nDocument:\n{document}\n\nQuestion: {question}'
)
CLOSED_BOOK_TEMPLATE = "{question}"


@dataclass(frozen=True)
class PromptConfig:
    """How a Record becomes chat messages. ``system=None`` keeps the chat template's default."""

    template: str = DEFAULT_TEMPLATE
    closed_book_template: str = CLOSED_BOOK_TEMPLATE
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE
    system: str | None = None


def build_messages(record: Record, cfg: PromptConfig, document: str | None = None) -> list[dict[str, str]]:
    """Chat messages up to (not including) the assistant answer. ``document`` overrides for truncation."""
    if record.messages is not None:
        return [dict(m) for m in record.messages]
    doc = record.document if document is None else document
    template = cfg.template if record.document else cfg.closed_book_template
    user = template.format(unanswerable=cfg.unanswerable_sentence, document=doc, question=record.question)
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages.append({"role": "user", "content": user})
    return messages


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """Prompt text ending with the assistant generation header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], response: str
) -> str:
    """Prompt + response as one chat, including the template's end-of-turn after the response."""
    return tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )


def fit_document(
    tokenizer: PreTrainedTokenizerBase,
    record: Record,
    cfg: PromptConfig,
    length_of: Callable[[list[dict[str, str]]], int],
    max_length: int,
) -> list[dict[str, str]] | None:
    """Messages for ``record`` with the document cut (marked `` ...``) until ``length_of`` them
    is at most ``max_length`` tokens; the question and instructions are never cut.

    Returns None when even an empty document does not fit (or there is no document to cut).
    """
    messages = build_messages(record, cfg)
    over = length_of(messages) - max_length
    if over <= 0:
        return messages
    if not record.document or record.messages is not None:
        return None
    doc_ids = tokenizer(record.document, add_special_tokens=False)["input_ids"]
    keep = max(0, len(doc_ids) - over)
    while True:  # the " ..." mark and re-tokenization can cost a few tokens: shorten until it fits
        doc = tokenizer.decode(doc_ids[:keep]).rstrip() + " ..."
        messages = build_messages(record, cfg, document=doc)
        over = length_of(messages) - max_length
        if over <= 0:
            return messages
        if keep == 0:
            return None
        keep = max(0, keep - max(1, over))


def prompt_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> int:
    """Tokens of the rendered prompt (with the generation header)."""
    return len(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def generation_prompt(
    tokenizer: PreTrainedTokenizerBase, record: Record, cfg: PromptConfig, max_tokens: int | None = None
) -> str:
    """The rendered prompt the model answers; with ``max_tokens`` the document is cut to fit
    (as training cuts it), so one very long document cannot stall a whole generation batch."""
    messages = build_messages(record, cfg)
    if max_tokens is not None:
        lengths = lambda m: prompt_length(tokenizer, m)  # noqa: E731
        messages = fit_document(tokenizer, record, cfg, lengths, max_tokens) or messages
    return render_prompt(tokenizer, messages)


def prompt_token_budget(max_length: int, answer_tokens: int) -> int:
    """Prompt tokens left when a sequence of ``max_length`` must also hold ``answer_tokens``."""
    return max(1, max_length - answer_tokens)
