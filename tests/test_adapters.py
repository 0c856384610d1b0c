"""Dataset adapters on the real offline files and on malformed rows."""

from __future__ import annotations

import json

import pytest

from ssr.data.adapters import DataError, embedded_grounded_qa, hub, jsonl, quac, squad_v2, subsample


def test_squad_split_by_article_has_no_shared_document(data_root):
    path = data_root / "squad_v2" / "dev-v2.0.json"
    train, test = squad_v2(str(path), split="train"), squad_v2(str(path), split="test")
    assert train and test
    assert not {r.meta["title"] for r in train} & {r.meta["title"] for r in test}
    assert not {r.document for r in train} & {r.document for r in test}
    una = [r for r in train if not r.answerable]
    assert una and all(r.gold == "I cannot answer this question based on the provided document." for r in una)


def test_quac_strips_marker_and_reads_question(data_root):
    rows = quac(str(data_root / "quac" / "quac.jsonl"))
    assert len(rows) == 1000 and sum(not r.answerable for r in rows) == 238
    assert all("CANNOTANSWER" not in r.document for r in rows)
    assert rows[0].question == "did she have any other children?"


def test_embedded_set_is_deterministic_and_disjoint():
    a, b = embedded_grounded_qa("train"), embedded_grounded_qa("train")
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    test = embedded_grounded_qa("test")
    assert not {r.meta["title"] for r in a} & {r.meta["title"] for r in test}
    assert 0.4 < sum(r.answerable for r in a) / len(a) < 0.6
    for r in a[:40]:
        if r.answerable:
            assert r.meta["answers"][0] in r.document


def _write(tmp_path, lines: list[bytes]):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return str(p)


@pytest.mark.parametrize(
    "line, needle",
    [
        (b'{"id": "2", "prompt": "q"}', "missing field 'response'"),
        (b'{"id": "2", "prompt": "", "response": "r"}', "'prompt' is empty"),
        (b'{"id": "2", "prompt": 3, "response": "r"}', "'prompt' must be a string"),
        (b'{"id": "2", "prompt": "q", "response": "\xff\xfe"}', "not valid UTF-8"),
        (b'{"id": "1", "prompt": "q", "response": "r"}', "duplicate id '1'"),
        (b'{"id": "2", "prompt": "q", "resp', "invalid JSON"),
    ],
)
def test_bad_jsonl_rows_name_file_row_and_field(tmp_path, line, needle):
    path = _write(tmp_path, [b'{"id": "1", "prompt": "q", "response": "r"}', line])
    with pytest.raises(DataError, match=needle) as err:
        jsonl(path)
    assert "d.jsonl:2" in str(err.value)
    rows = jsonl(path, on_error="skip")
    assert [r.id for r in rows] == ["1"]


def test_jsonl_messages_rows(tmp_path):
    row = {"id": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    [rec] = jsonl(_write(tmp_path, [json.dumps(row).encode()]))
    assert rec.gold == "yo" and rec.messages == ({"role": "user", "content": "hi"},)
    bad = {"id": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(DataError, match="assistant turn"):
        jsonl(_write(tmp_path, [json.dumps(bad).encode()]))


def test_hub_adapter_reads_a_local_builder_offline(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text(
        "\n".join(
            json.dumps({"id": str(i), "question": f"q{i}", "answers": {"text": [f"a{i}"]}, "context": "c"})
            for i in range(3)
        )
    )
    rows = hub("json", data_files=str(p), split="train", response_field="answers")
    assert [r.gold for r in rows] == ["a0", "a1", "a2"]


def test_subsample_balances(tmp_path):
    rows = embedded_grounded_qa("train")
    bal = subsample(rows, max_rows=20, balance=True, seed=1)
    assert len(bal) == 20 and sum(r.answerable for r in bal) == 10


def test_swapped_unanswerables_pair_a_question_with_a_passage_lacking_its_answers():
    from ssr.data.adapters import swapped_unanswerables
    from ssr.data.records import Record

    def row(i, title, doc, answer):
        return Record(
            id=f"q{i}",
            question=f"Q{i}?",
            gold=answer,
            document=doc,
            meta={"title": title, "answers": [answer]},
        )

    rows = [
        row(0, "A", "The class P holds problems solvable in polynomial time.", "P"),
        row(1, "A", "The class NP is verified in polynomial time.", "NP"),
        row(2, "B", "Paris is the capital and most populous city of France.", "Paris"),
        row(3, "B", "France has a population of about 68 million.", "68 million"),
        row(4, "C", "Pumpkins grow upward in a warm summer.", "summer"),
        row(5, "C", "A prime number has exactly two divisors.", "two"),
    ]
    out = swapped_unanswerables(rows, share=0.5, seed=3, unanswerable_sentence="NO")
    assert out == swapped_unanswerables(rows, share=0.5, seed=3, unanswerable_sentence="NO")  # deterministic
    swapped = [r for r in out if not r.answerable]
    assert len(out) == 6 and len(swapped) == 3  # each question once: kept or swapped
    by_id = {r.id: r for r in rows}
    for r in swapped:
        source, donor = by_id[r.id.removesuffix(":swapped")], by_id[r.meta["swapped_from"]]
        assert r.gold == "NO" and r.question == source.question and r.document == donor.document
        assert donor.meta["title"] != source.meta["title"]  # another article
        assert f" {source.gold.lower()} " not in f" {donor.document.lower().replace('.', ' ')} "
    # "P" occurs inside words ("Pumpkins", "upward") but never as a word there: that passage may serve
    lone = [
        Record(id="p", question="?", gold="P", document="The class P.", meta={"title": "A", "answers": ["P"]})
    ]
    donors = [
        Record(
            id="d",
            question="?",
            gold="x",
            document="Pumpkins grow upward.",
            meta={"title": "C", "answers": ["x"]},
        )
    ]
    made = {r.id: r for r in swapped_unanswerables(lone + donors, share=1.0, seed=0)}
    assert made["p:swapped"].document == "Pumpkins grow upward."
    with pytest.raises(DataError, match="no document of another group lacks its answers"):
        swapped_unanswerables(rows[:2], share=1.0, seed=0)  # one article only
    with pytest.raises(ValueError, match="swap_share"):
        swapped_unanswerables(rows, share=1.5, seed=0)
