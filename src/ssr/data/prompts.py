"""Grounded-QA prompt: instruction, document, question; rendered with the tokenizer's chat template."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ssr.records import Record

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
