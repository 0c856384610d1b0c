"""The row normaliser: every supported dataset format from a local JSONL file, and hub datasets
saved locally through ``datasets`` (save_to_disk, parquet) read by the code a hub id uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose
from ssr.data.adapters import DataError, hub, jsonl
from ssr.data.prompts import DEFAULT_UNANSWERABLE, PromptConfig, build_messages

USER_HI = {"role": "user", "content": "Say hi."}
SYSTEM = {"role": "system", "content": "Be brief."}


def _jsonl(tmp_path: Path, *rows: dict) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_completion_strings(tmp_path):
    path = _jsonl(
        tmp_path,
        {"prompt": "Capital of France?", "completion": "Paris."},
        {
            "prompt": "Who wrote it?",
            "completion": "I cannot tell.",
            "document": "A poem.",
            "answerable": False,
        },
    )
    plain, grounded = jsonl(path)
    assert (plain.question, plain.gold, plain.document, plain.messages) == (
        "Capital of France?",
        "Paris.",
        "",
        None,
    )
    assert plain.meta["format"] == "prompt_completion" and plain.id == "rows.jsonl:1"
    assert grounded.document == "A poem." and grounded.answerable is False
    # closed-book rows use prompt.closed_book_template, grounded ones the grounded template
    assert build_messages(plain, PromptConfig()) == [{"role": "user", "content": "Capital of France?"}]
    assert "Document:\nA poem." in build_messages(grounded, PromptConfig())[0]["content"]


def test_prompt_completion_conversational(tmp_path):
    path = _jsonl(
        tmp_path,
        {"prompt": [SYSTEM, USER_HI], "completion": [{"role": "assistant", "content": "Hi!"}]},
        {"id": 7, "prompt": [USER_HI], "completion": "Hello."},
    )
    first, second = jsonl(path)
    assert first.messages == (SYSTEM, USER_HI) and first.gold == "Hi!" and first.question == "Say hi."
    assert second.id == "7" and second.messages == (USER_HI,) and second.gold == "Hello."
    assert build_messages(first, PromptConfig()) == [SYSTEM, USER_HI]


def test_messages(tmp_path):
    [rec] = jsonl(_jsonl(tmp_path, {"messages": [USER_HI, {"role": "assistant", "content": "Hi."}]}))
    assert rec.messages == (USER_HI,) and rec.gold == "Hi." and rec.meta["format"] == "messages"


def test_prompt_response_and_custom_field_names(tmp_path):
    [rec] = jsonl(_jsonl(tmp_path, {"id": "a", "prompt": "Q?", "response": "A.", "document": "D."}))
    assert (rec.id, rec.question, rec.gold, rec.document) == ("a", "Q?", "A.", "D.")
    [rec] = jsonl(_jsonl(tmp_path, {"q": "Q?", "a": "A."}), prompt_field="q", response_field="a")
    assert (rec.question, rec.gold) == ("Q?", "A.")


def test_alpaca_input_goes_into_the_prompt_not_the_document(tmp_path):
    path = _jsonl(
        tmp_path,
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {
            "instruction": "And now?",
            "input": "",
            "output": "Green.",
            "system": "Be brief.",
            "history": [["Hi", "Hello"]],
        },
    )
    with_input, without_input, chat = jsonl(path)
    assert with_input.question == "Translate to French.\n\nGood morning" and with_input.document == ""
    assert build_messages(with_input, PromptConfig()) == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"}
    ]
    assert without_input.question == "Name a colour." and without_input.gold == "Blue."
    assert chat.messages == (
        SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And now?"},
    )
    assert {r.meta["format"] for r in (with_input, without_input, chat)} == {"alpaca"}


def test_sharegpt(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Say hi."},
            {"from": "gpt", "value": "Hi."},
        ]
    }
    [rec] = jsonl(_jsonl(tmp_path, row))
    assert rec.messages == (SYSTEM, USER_HI) and rec.gold == "Hi." and rec.meta["format"] == "sharegpt"
    top_system = {"system": "Be brief.", "conversations": row["conversations"][1:]}
    [rec] = jsonl(_jsonl(tmp_path, top_system))
    assert rec.messages == (SYSTEM, USER_HI)


def test_format_override_and_errors_name_file_line_and_keys(tmp_path):
    path = _jsonl(tmp_path, {"prompt": "Q?", "response": "A."}, {"instruction": "Do it.", "answer": "Done."})
    with pytest.raises(DataError) as err:
        jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: missing field 'prompt'"), message
    assert "row keys: instruction, answer" in message and "format prompt_response" in message
    with pytest.raises(DataError, match=r"rows.jsonl:1: missing field 'instruction' \[format alpaca"):
        jsonl(path, format="alpaca")
    with pytest.raises(ValueError, match="unknown data format 'chatml'"):
        jsonl(path, format="chatml")
    bad = _jsonl(
        tmp_path, {"conversations": [{"from": "human", "value": "x"}, {"from": "tool", "value": "y"}]}
    )
    with pytest.raises(DataError, match=r"rows.jsonl:1: .*unsupported speaker 'tool'"):
        jsonl(bad)
    ends_with_user = _jsonl(tmp_path, {"prompt": [USER_HI], "completion": [USER_HI]})
    with pytest.raises(DataError, match="must end with a non-empty assistant turn"):
        jsonl(ends_with_user)
    doc_with_chat = _jsonl(
        tmp_path, {"messages": [USER_HI, {"role": "assistant", "content": "x"}], "document": "D"}
    )
    with pytest.raises(DataError, match="only read with string prompts"):
        jsonl(doc_with_chat)


def test_hydra_data_jsonl_format_override(tmp_path):
    from hydra.utils import instantiate

    path = _jsonl(tmp_path, {"instruction": "Name a colour.", "output": "Blue.", "prompt": "ignored"})
    cfg = compose(["data=jsonl", f"data.train.path={path}", "data.train.format=alpaca"])
    [rec] = instantiate(cfg.data.train)
    assert rec.question == "Name a colour." and rec.meta["format"] == "alpaca"


# --------------------------------------------------------------------------- hub datasets, saved locally
SQUAD_ROWS = [
    {
        "id": "q1",
        "title": "Paris",
        "context": "Paris is the capital of France.",
        "question": "What is the capital of France?",
        "answers": {"text": ["Paris", "Paris"], "answer_start": [0, 0]},
    },
    {
        "id": "q2",
        "title": "Paris",
        "context": "Paris is the capital of France.",
        "question": "What is the capital of Peru?",
        "answers": {"text": [], "answer_start": []},
    },
]


@pytest.fixture
def squad_v2_saved(tmp_path) -> dict[str, Path]:
    """rajpurkar/squad_v2's schema (empty answers = unanswerable), saved the two ways ``datasets`` saves."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        }
    )
    ds = datasets.Dataset.from_list(SQUAD_ROWS, features=features)
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "parquet").mkdir()
    ds.to_parquet(str(tmp_path / "parquet" / "validation-00000-of-00001.parquet"))
    return {"saved": tmp_path / "saved", "parquet": tmp_path / "parquet"}


@pytest.mark.parametrize("kind", ["saved", "parquet"])
def test_hub_squad_v2_empty_answers_are_unanswerable(squad_v2_saved, kind):
    cfg = compose(["data=hub", f"data.train.name={squad_v2_saved[kind]}", "data.train.split=validation"])
    from hydra.utils import instantiate

    answerable, unanswerable = instantiate(cfg.data.train)
    assert (answerable.id, answerable.gold, answerable.answerable) == ("q1", "Paris", True)
    assert answerable.document == "Paris is the capital of France."
    assert answerable.meta["answers"] == ["Paris", "Paris"]
    assert (unanswerable.id, unanswerable.answerable) == ("q2", False)
    assert unanswerable.gold == cfg.prompt.unanswerable_sentence == DEFAULT_UNANSWERABLE
    assert unanswerable.meta["answers"] == []


def test_hub_missing_split_and_prompt_completion_columns(squad_v2_saved, tmp_path):
    with pytest.raises(DataError, match="no split 'train' \\(has validation\\)"):
        hub(str(squad_v2_saved["saved"]), split="train")
    import datasets

    trl = datasets.Dataset.from_list(
        [{"prompt": [USER_HI], "completion": [{"role": "assistant", "content": "Hi."}]}]
    )
    trl.save_to_disk(str(tmp_path / "trl"))
    [rec] = hub(str(tmp_path / "trl"), split="train")
    assert rec.messages == (USER_HI,) and rec.gold == "Hi." and rec.id == "0"


def test_readme_examples_load_as_their_format(tmp_path):
    """Every JSONL example under the README's "Bring your own data" loads, as the format it names."""
    import re

    from conftest import REPO

    section = (REPO / "README.md").read_text().split("## Bring your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^`(\w+)`[^\n]*(?:\n[^\n`][^\n]*)*\n```json\n(.*?)```", section, flags=re.M | re.S)
    assert {name for name, _ in blocks} == {
        "prompt_completion",
        "messages",
        "prompt_response",
        "alpaca",
        "sharegpt",
    }
    for name, block in blocks:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(block)
        records = jsonl(str(path))
        assert len(records) == 2 and {r.meta["format"] for r in records} == {name}, name
