"""The one row normaliser: the dataset formats users already have -> Records.

Formats (detected from a row's keys, or named with ``format=``):

========================  ================================================================
``prompt_completion``     TRL: ``prompt`` + ``completion``, both strings, or both lists of
                          ``{role, content}`` messages (conversational)
``messages``              ``messages``: a chat ending with the assistant answer
``prompt_response``       ``prompt`` + ``response`` (field names configurable; a SQuAD-style
                          ``{"text": [...]}`` answer with no text is an unanswerable question)
``alpaca``                ``instruction`` + ``input`` (optional, part of the prompt) + ``output``
                          (+ optional ``system`` and ``history`` of ``[prompt, answer]`` pairs)
``sharegpt``              ``conversations``: ``[{from: human|gpt|system, value}]`` (+ ``system``)
========================  ================================================================

The grounded-QA fields are optional: ``document`` (only for string prompts; the prompt then uses
``prompt.template``, else ``prompt.closed_book_template``) and ``answerable`` (default true).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssr.data.prompts import DEFAULT_UNANSWERABLE
from ssr.data.records import Record

FORMATS = ("prompt_completion", "messages", "prompt_response", "alpaca", "sharegpt")
CHAT_FORMATS = ("messages", "sharegpt")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


# A string prompt (grounded-QA / closed-book template) or a chat prefix
Prompt = str | tuple[dict[str, str], ...]
# (prompt, gold, answerable, all reference answers or None)
Parsed = tuple[Prompt, str, bool, list[str] | None]


class DataError(ValueError):
    """A dataset row is malformed."""


@dataclass(frozen=True)
class RowFields:
    """Field names of the ``prompt_response`` format and of the optional grounded-QA fields."""

    prompt: str = "prompt"
    response: str = "response"
    document: str | None = "document"
    id: str = "id"
    answerable: str | None = "answerable"


def require_str(row: dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return check_unicode(value, key, where)


def check_unicode(value: str, key: str, where: str) -> str:
    """JSON escapes can smuggle in lone surrogates, which no UTF-8 file (cache, tokenizer) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: field {key!r} is not valid Unicode (lone surrogate at character {err.start})"
        ) from err
    return value


def optional_id(row: dict[str, Any], key: str, where: str) -> str | None:
    """A row id: a non-empty string or an integer; None when absent."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {key!r} must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return check_unicode(str(value), key, where)


def optional_bool(row: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """A JSON boolean (``"false"`` or ``0`` would silently read as the wrong value); default when absent."""
    value = row.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise DataError(
            f"{where}: field {key!r} must be a boolean (true/false), got {type(value).__name__} {value!r:.40}"
        )
    return value


def detect_format(row: dict[str, Any], fields: RowFields = RowFields()) -> str:
    """The format a row's keys say; ``prompt_response`` when none matches (its errors name the
    missing field)."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row and fields.response not in row:
        return "prompt_completion"
    return "prompt_response"


def row_to_record(
    row: dict[str, Any],
    where: str,
    default_id: str,
    source: str,
    fmt: str = "auto",
    fields: RowFields = RowFields(),
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
) -> Record:
    """One row of any supported format as a Record; a bad row raises ``DataError`` naming ``where``,
    the field, the format and the keys the row has."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    fmt = detect_format(row, fields) if fmt == "auto" else fmt
    try:
        rid = optional_id(row, fields.id, where) or default_id
        answerable = optional_bool(row, fields.answerable, where, True) if fields.answerable else True
        document = ""
        if fields.document and row.get(fields.document) is not None:
            document = require_str(row, fields.document, where, allow_empty=True)
        prompt, gold, answerable, answers = _FORMATS[fmt](
            row, where, fields, answerable, unanswerable_sentence
        )
    except DataError as err:
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(f"{err} [format {fmt}; row keys: {keys}]") from err
    meta: dict[str, Any] = {"source": source, "format": fmt}
    if answers is not None:
        meta["answers"] = answers
    if isinstance(prompt, str):
        return Record(id=rid, question=prompt, gold=gold, document=document, answerable=answerable, meta=meta)
    if document:
        raise DataError(
            f"{where}: field {fields.document!r} is only read with string prompts; put the document "
            f"into the messages [format {fmt}]"
        )
    question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    return Record(id=rid, question=question, gold=gold, messages=prompt, answerable=answerable, meta=meta)


def _chat(value: Any, key: str, where: str, role_key: str = "role", content_key: str = "content") -> list:
    """A non-empty list of ``{role, content}`` string turns (sharegpt: ``{from, value}``)."""
    if not (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get(role_key), str) and isinstance(m.get(content_key), str)
            for m in value
        )
    ):
        raise DataError(
            f"{where}: field {key!r} must be a non-empty list of {{{role_key}, {content_key}}} strings"
        )
    turns = []
    for m in value:
        role = m[role_key]
        if role_key == "from":
            if role not in SHAREGPT_ROLES:
                raise DataError(
                    f"{where}: field {key!r} has an unsupported speaker {role!r} "
                    f"(expected one of {', '.join(SHAREGPT_ROLES)})"
                )
            role = SHAREGPT_ROLES[role]
        turns.append({"role": role, "content": check_unicode(m[content_key], key, where)})
    return turns


def _split_answer(
    turns: list[dict[str, str]], key: str, where: str
) -> tuple[tuple[dict[str, str], ...], str]:
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        raise DataError(f"{where}: field {key!r} must end with a non-empty assistant turn")
    return tuple(turns[:-1]), turns[-1]["content"]


def _with_system(row: dict[str, Any], where: str, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    if row.get("system") is None or (turns and turns[0]["role"] == "system"):
        return turns
    system = require_str(row, "system", where, allow_empty=True)
    return [{"role": "system", "content": system}, *turns] if system.strip() else turns


def _messages(row, where, fields, answerable, unanswerable) -> Parsed:
    prefix, gold = _split_answer(_chat(row.get("messages"), "messages", where), "messages", where)
    return prefix, gold, answerable, None


def _sharegpt(row, where, fields, answerable, unanswerable) -> Parsed:
    turns = _with_system(row, where, _chat(row.get("conversations"), "conversations", where, "from", "value"))
    prefix, gold = _split_answer(turns, "conversations", where)
    return prefix, gold, answerable, None


def _prompt_completion(row, where, fields, answerable, unanswerable) -> Parsed:
    if isinstance(row.get("prompt"), list):
        prompt = _chat(row["prompt"], "prompt", where)
        completion = row.get("completion")
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        prefix, gold = _split_answer(prompt + _chat(completion, "completion", where), "completion", where)
        return prefix, gold, answerable, None
    return require_str(row, "prompt", where), require_str(row, "completion", where), answerable, None


def _alpaca(row, where, fields, answerable, unanswerable) -> Parsed:
    instruction = require_str(row, "instruction", where)
    extra = require_str(row, "input", where, allow_empty=True) if row.get("input") is not None else ""
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    output = require_str(row, "output", where)
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(t, str) for t in h) for h in history
    ):
        raise DataError(f"{where}: field 'history' must be a list of [prompt, answer] string pairs")
    if row.get("system") is None and not history:
        return prompt, output, answerable, None
    turns = [
        {"role": role, "content": check_unicode(text, "history", where)}
        for pair in history
        for role, text in zip(("user", "assistant"), pair)
    ]
    prefix = tuple(_with_system(row, where, [*turns, {"role": "user", "content": prompt}]))
    return prefix, output, answerable, None


def _prompt_response(row, where, fields, answerable, unanswerable) -> Parsed:
    prompt = require_str(row, fields.prompt, where)
    response = row.get(fields.response)
    if (
        isinstance(response, dict) and "text" in response
    ):  # SQuAD-style {"text": [...], "answer_start": [...]}
        texts = response["text"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: field {fields.response!r}.text must be a list of strings")
        texts = [check_unicode(t, fields.response, where) for t in texts if t.strip()]
        if not texts:  # SQuAD 2.0 marks an unanswerable question by having no answer
            if answerable and fields.answerable and row.get(fields.answerable) is True:
                raise DataError(f"{where}: answerable question without answers in {fields.response!r}")
            return prompt, unanswerable, False, []
        return prompt, texts[0], answerable, texts
    return prompt, require_str(row, fields.response, where), answerable, None


_FORMATS = {
    "prompt_completion": _prompt_completion,
    "messages": _messages,
    "prompt_response": _prompt_response,
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}
