"""Property-based bad input: adapters on random malformed rows, tokenization on random texts and lengths.

Examples are derandomized (the same in every CI run). Explore new ones locally with
``SSR_HYPOTHESIS_EXPLORE=1 SSR_HYPOTHESIS_EXAMPLES=1000 pytest tests/test_bad_input.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ssr.data.adapters import DataError, jsonl, quac, squad_v2
from ssr.data.prompts import PromptConfig, build_messages
from ssr.data.records import Record
from ssr.data.tokenize import IGNORE_INDEX, tokenize_pair, tokenize_record

SETTINGS = settings(
    max_examples=int(os.environ.get("SSR_HYPOTHESIS_EXAMPLES", "80")),
    deadline=None,
    derandomize="SSR_HYPOTHESIS_EXPLORE" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)
MISSING = object()

# --------------------------------------------------------------------------- value strategies
# Text: plain words, unicode, whitespace, chat control tokens, JSON-escaped lone surrogates.
words = st.text(alphabet="abcdefghij XYZ0123456789.,?!'\"é中🙂\t", min_size=1, max_size=30)
nasty = st.sampled_from(["<|im_start|>", "<|im_end|>", "\n", "\n\n", "  ", "{question}", "\\", "\x00"])
text = st.lists(st.one_of(words, nasty), min_size=1, max_size=4).map("".join)
surrogate = st.sampled_from(["\ud800", "bad \udcff end"])
wrong_type = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.just("k"), st.integers(), max_size=1),
)
invalid_str = st.one_of(st.just(MISSING), st.none(), st.just(""), st.just("   "), surrogate, wrong_type)
# Mostly valid values, so that files mix good and bad rows (one_of does not weight its branches).
str_field = st.integers(0, 7).flatmap(lambda n: text if n else invalid_str)
valid_id = st.one_of(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 3))
invalid_id = st.one_of(st.booleans(), st.floats(0, 2), st.lists(st.integers(), max_size=1), surrogate)
ids = st.integers(0, 7).flatmap(
    lambda n: valid_id if n > 2 else st.sampled_from([MISSING, None]) if n else invalid_id
)
answerable = st.integers(0, 7).flatmap(
    lambda n: (
        st.booleans()
        if n > 2
        else st.sampled_from([MISSING, None])
        if n
        else st.sampled_from(["false", "yes", 0, 1])
    )
)


def _text_ok(value: Any, allow_empty: bool = False) -> bool:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _build(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


# --------------------------------------------------------------------------- generic JSONL
@st.composite
def jsonl_lines(draw) -> tuple[list[bytes], list[str | None]]:
    """Lines of a JSONL file and, per line, the fields a correct adapter must complain about
    (empty list: a valid row; None: a blank line, not a row)."""
    lines: list[bytes] = []
    problems: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 11))
        kind = "row" if n > 4 else ["messages", "messages", "blank", "bytes", "json"][n]
        if kind == "blank":
            lines.append(b"   ")
            problems.append(None)
            continue
        if kind == "bytes":  # not UTF-8 inside a string value
            lines.append(b'{"id": "z", "prompt": "caf\xe9", "response": "r"}')
            problems.append(["UTF-8"])
            continue
        if kind == "json":
            lines.append(draw(st.sampled_from([b'{"id": "z", "prompt": "q", ', b"[1, 2]", b'"row"', b"nul"])))
            problems.append(["JSON"])
            continue
        rid, ans = draw(ids), draw(answerable)
        row_problems = []
        if not (rid is MISSING or rid is None or _text_ok(rid, allow_empty=True) or type(rid) is int):
            row_problems.append("'id'")
        if not (ans is MISSING or ans is None or isinstance(ans, bool)):
            row_problems.append("'answerable'")
        if kind == "messages":
            last = draw(st.sampled_from(["assistant", "user"]))
            content = draw(str_field)
            msgs = [{"role": "user", "content": draw(text)}, _build(role=last, content=content)]
            if last != "assistant" or not _text_ok(content):
                row_problems.append("'messages'")
            row = _build(id=rid, answerable=ans, messages=msgs)
        else:
            prompt, response, document = draw(str_field), draw(str_field), draw(str_field)
            if not _text_ok(prompt):
                row_problems.append("'prompt'")
            if not _text_ok(response):
                row_problems.append("'response'")
            if not (document is MISSING or document is None or _text_ok(document, allow_empty=True)):
                row_problems.append("'document'")
            row = _build(id=rid, answerable=ans, prompt=prompt, response=response, document=document)
        lines.append(json.dumps(row).encode())
        problems.append(row_problems)
    return lines, problems


def _write(lines: list[bytes]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ssr-bad-input-"))
    path = folder / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(jsonl_lines())
def test_jsonl_bad_rows_raise_naming_file_row_field_or_are_skipped_and_counted(caplog, case):
    lines, problems = case
    path = _write(lines)
    # the expected outcome: valid rows in order, the first occurrence of an id wins
    expected, seen, first_error = [], set(), None
    for lineno, (line, probs) in enumerate(zip(lines, problems), start=1):
        if probs is None:
            continue
        rid = None
        if not probs:
            row = json.loads(line)
            rid = str(row["id"]) if row.get("id") is not None else f"d.jsonl:{lineno}"
            if rid in seen:
                probs = ["duplicate id"]
        if probs and first_error is None:
            first_error = (lineno, probs)
        if not probs:
            seen.add(rid)
            expected.append(rid)

    event(f"first_error={first_error is not None}, valid rows={bool(expected)}")
    if first_error is None and not expected:
        with pytest.raises(DataError, match=f"{path}: no usable rows"):
            jsonl(str(path))
    elif first_error is None:
        assert [r.id for r in jsonl(str(path))] == expected
    else:
        lineno, probs = first_error
        with pytest.raises(DataError) as err:
            jsonl(str(path))
        message = str(err.value)
        assert message.startswith(f"{path}:{lineno}: "), message
        assert any(p in message for p in probs), (message, probs)

    n_bad = sum(1 for p in problems if p is not None) - len(expected)
    if expected:
        caplog.clear()
        with caplog.at_level("WARNING"):
            rows = jsonl(str(path), on_error="skip")
        assert [r.id for r in rows] == expected
        assert all(isinstance(r.gold, str) and r.gold.strip() for r in rows)
        assert all(isinstance(r.answerable, bool) for r in rows)
        if n_bad:
            assert f"skipped {n_bad} bad rows" in caplog.text
    else:
        with pytest.raises(DataError, match="no usable rows"):
            jsonl(str(path), on_error="skip")


# --------------------------------------------------------------------------- QuAC JSONL
@SETTINGS
@given(st.lists(st.tuples(str_field, str_field), min_size=1, max_size=5))
def test_quac_rows_load_or_fail_with_data_error(rows):
    lines = []
    for context, answer in rows:
        if isinstance(context, str):
            context = f"{context} Question: {context}"
        lines.append(json.dumps(_build(context=context, answer=answer)).encode())
    path = _write(lines)
    try:
        records = quac(str(path), on_error="skip")
    except DataError as err:
        assert str(path) in str(err)
        return
    for record in records:
        assert _text_ok(record.question) and _text_ok(record.gold) and _text_ok(record.document, True)


# --------------------------------------------------------------------------- SQuAD JSON
squad_value = st.one_of(str_field, st.just([]), st.just({}))


@st.composite
def squad_files(draw) -> Any:
    def qa() -> Any:
        return draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "id": st.one_of(st.sampled_from(["q1", "q2", "q3"]), squad_value),
                        "question": squad_value,
                        "is_impossible": st.one_of(st.booleans(), st.sampled_from(["False", 0, None])),
                        "answers": st.one_of(
                            st.lists(st.fixed_dictionaries({"text": squad_value}), max_size=2),
                            squad_value,
                        ),
                    }
                ),
                squad_value,
            )
        )

    def paragraph() -> Any:
        if draw(st.integers(0, 5)) == 0:
            return draw(squad_value)
        qas = [qa() for _ in range(draw(st.integers(0, 3)))]
        return {"context": draw(squad_value), "qas": qas if draw(st.integers(0, 5)) else draw(squad_value)}

    def article() -> Any:
        if draw(st.integers(0, 5)) == 0:
            return draw(squad_value)
        return {
            "title": draw(squad_value),
            "paragraphs": [paragraph() for _ in range(draw(st.integers(0, 2)))],
        }

    return _clean({"version": "v2.0", "data": [article() for _ in range(draw(st.integers(1, 3)))]})


def _clean(obj: Any) -> Any:
    """Drop MISSING keys; a MISSING list item becomes null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if v is not MISSING}
    if isinstance(obj, list):
        return [None if v is MISSING else _clean(v) for v in obj]
    return obj


@SETTINGS
@given(squad_files())
def test_squad_structure_errors_are_data_errors(data):
    path = _write([json.dumps(data).encode()])
    for on_error in ("raise", "skip"):
        try:
            records = squad_v2(str(path), on_error=on_error)
        except DataError as err:
            assert str(path) in str(err)
            continue
        for record in records:
            assert _text_ok(record.question) and _text_ok(record.gold) and _text_ok(record.document)
            assert isinstance(record.answerable, bool)
            assert not record.answerable or record.meta["answers"]


def test_squad_is_impossible_must_be_a_boolean(tmp_path):
    qa = {"id": "q", "question": "Who?", "is_impossible": "False", "answers": [{"text": "Ana"}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Ana.", "qas": [qa]}]}]}))
    with pytest.raises(DataError, match=r"qas\[0\]: field 'is_impossible' must be a boolean"):
        squad_v2(str(path))


# --------------------------------------------------------------------------- tokenization
CFG = PromptConfig()
prose = st.text(alphabet="abcdefghij klmnop XYZ.,?'é中\n", min_size=1, max_size=400)
tok_text = st.lists(st.one_of(prose, nasty), min_size=1, max_size=3).map("".join)
response_text = tok_text.filter(lambda s: s.strip())


@st.composite
def examples(draw) -> tuple[Record, str, float]:
    question = draw(response_text)
    if draw(st.integers(0, 4)) == 0:  # a chat-prefix record (never truncated)
        record = Record(
            id="m", question=question, gold="x", messages=({"role": "user", "content": question},)
        )
    else:
        document = draw(
            st.one_of(st.just(""), tok_text, tok_text.map(lambda s: s * 20), prose.map(lambda s: s * 5))
        )
        record = Record(id="r", question=question, gold="x", document=document)
    # how far max_length falls below the untruncated length, as a share of the document's tokens
    return record, draw(response_text), draw(st.integers(-1, 12)) / 10


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(examples())
def test_masking_and_truncation_properties(tokenizer, example):
    record, response, cut = example
    full_ids, full_labels = tokenize_pair(tokenizer, build_messages(record, CFG), response)
    doc_tokens = len(tokenizer(record.document, add_special_tokens=False)["input_ids"]) or 20
    max_length = max(8, len(full_ids) - int(cut * doc_tokens))
    n_prompt = full_labels.count(IGNORE_INDEX)
    response_ids = full_ids[n_prompt:]
    assert full_labels == [IGNORE_INDEX] * n_prompt + response_ids and response_ids
    assert tokenizer.decode(response_ids).startswith(response)

    tok = tokenize_record(tokenizer, record, response, CFG, max_length)
    event("dropped" if tok is None else "truncated" if tok.truncated_document else "fits")
    if tok is None:  # dropped only when even an empty document leaves no room for the response
        assert len(full_ids) > max_length
        if record.document and record.messages is None:
            empty, _ = tokenize_pair(tokenizer, build_messages(record, CFG, document=" ..."), response)
            assert len(empty) > max_length
        return
    assert len(tok.input_ids) == len(tok.labels) <= max_length
    k = tok.labels.count(IGNORE_INDEX)
    assert tok.labels[:k] == [IGNORE_INDEX] * k, "-100 exactly on the prompt"
    assert tok.input_ids[k:] == response_ids == tok.labels[k:], "the response is never cut"
    assert tokenizer.decode(tok.input_ids[:k]).endswith("<|im_start|>assistant\n")
    if len(full_ids) <= max_length:
        assert not tok.truncated_document and tok.input_ids == full_ids
    else:
        assert tok.truncated_document and record.document and record.messages is None
        assert tokenizer.decode(tok.input_ids[:k]).count(" ...") >= 1


def test_a_document_longer_than_the_context_is_truncated_to_fit(tokenizer):
    record = Record(
        id="long", question="Who wrote it?", gold="Ana Ruiz.", document="A long filler sentence here. " * 2000
    )
    assert len(tokenizer(record.document)["input_ids"]) > 10_000
    tok = tokenize_record(tokenizer, record, record.gold, CFG, max_length=256)
    assert tok is not None and tok.truncated_document and 200 < len(tok.input_ids) <= 256
    assert tokenizer.decode([t for t in tok.labels if t != IGNORE_INDEX]) == "Ana Ruiz.<|im_end|>\n"


@pytest.mark.parametrize("response", ["\n\nAna Ruiz.", "  Ana", " \n", "Ana\n\n"])
def test_responses_with_edge_whitespace_tokenize_without_prefix_errors(tokenizer, response):
    messages = build_messages(Record(id="r", question="Who?", gold="x", document="Ana."), CFG)
    ids, labels = tokenize_pair(tokenizer, messages, response)
    k = labels.count(IGNORE_INDEX)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids[:k] == tokenizer(prompt, add_special_tokens=False)["input_ids"], (
        "prompt tokens as the model sees them at generation time"
    )
    assert tokenizer.decode(ids[k:]) == response + "<|im_end|>\n"
