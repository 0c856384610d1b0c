import math

import pytest

from ssr.eval.task_metrics import grounded_qa_scores, precision_recall_f1

UNANS = "The document does not contain the answer."


def test_hand_case_counts_and_scores():
    rows = [
        ("Paris is the capital.", "Paris", True),  # answered, recall 1
        ("The document does not contain the answer.", "", False),  # tp
        ("I think it is Lyon.", "", False),  # fn
        ("Cannot answer that from the text.", "Berlin", True),  # fp, recall 0
        ("the big red dog", "big brown dog", True),  # recall 2/3
    ]
    s = grounded_qa_scores(rows, UNANS)
    assert (s.n, s.n_answerable, s.n_unanswerable) == (5, 3, 2)
    assert s.unanswerable_accuracy == pytest.approx(3 / 5)  # rows 1, 2, 5 correct
    assert s.unanswerable_precision == pytest.approx(1 / 2)
    assert s.unanswerable_recall == pytest.approx(1 / 2)
    assert s.unanswerable_f1 == pytest.approx(1 / 2)
    assert s.answer_recall == pytest.approx((1 + 0 + 2 / 3) / 3)
    # the answers' quality where it answers: the declined row 4 is left out, not counted as 0
    assert s.over_refusal == pytest.approx(1 / 3)
    assert s.answered_recall == pytest.approx((1 + 2 / 3) / 2)
    # F1: row1 "paris is capital" vs "paris": p=1/3 r=1 -> 0.5; row4 0; row5 p=2/3 r=2/3 -> 2/3
    assert s.answer_f1 == pytest.approx((0.5 + 0 + 2 / 3) / 3)


def test_multiple_references_take_the_best():
    s = grounded_qa_scores([("Canberra", ["Sydney", "Canberra"], True)], UNANS)
    assert s.answer_recall == 1.0 and s.answer_f1 == 1.0


def test_no_unanswerable_rows_gives_nan_precision_and_recall():
    s = grounded_qa_scores([("Paris", "Paris", True)], UNANS)
    assert math.isnan(s.unanswerable_precision) and math.isnan(s.unanswerable_recall)
    assert math.isnan(s.unanswerable_f1)
    assert s.unanswerable_accuracy == 1.0


def test_only_unanswerable_rows_gives_nan_answer_scores():
    s = grounded_qa_scores([(UNANS, "", False)], UNANS)
    assert s.unanswerable_f1 == 1.0 and math.isnan(s.answer_recall)
    assert s.to_dict()["n_unanswerable"] == 1


def test_precision_recall_f1_edges():
    assert precision_recall_f1(0, 2, 0) == (0.0, pytest.approx(float("nan"), nan_ok=True), 0.0)
    p, r, f = precision_recall_f1(2, 2, 0)
    assert (p, r, f) == (0.5, 1.0, pytest.approx(2 / 3))


def test_answerable_row_without_gold_is_an_error():
    with pytest.raises(ValueError, match="gold"):
        grounded_qa_scores([("x", [], True)], UNANS)


def test_per_row_items_carry_each_rows_scores():
    from ssr.data.records import Record
    from ssr.eval.grounded import grounded_row_items

    records = [
        Record(id="a", question="q", gold="big brown dog", document="d", answerable=True),
        Record(id="b", question="q", gold="", document="d", answerable=False),
    ]
    rows = grounded_row_items(records, ["the big red dog", "I think it is Lyon."], UNANS)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["answer_recall"] == pytest.approx(2 / 3) and rows[0]["unanswerable_correct"] == 1.0
    assert rows[1]["unanswerable_correct"] == 0.0 and "answer_recall" not in rows[1]
    assert rows[1]["prediction"] == "I think it is Lyon."


def test_row_weights_score_like_repeated_rows():
    """weighted_scores under bootstrap-style counts equals the plain scores of the rows repeated."""
    import numpy as np

    from ssr.eval.task_metrics import aggregate_row_scores, row_scores, weighted_scores

    scored = [
        row_scores("Paris is the capital.", "Paris", True, UNANS),
        row_scores(UNANS, "", False, UNANS),
        row_scores("I think it is Lyon.", "", False, UNANS),
        row_scores("Cannot answer that from the text.", "Berlin", True, UNANS),
    ]
    counts = np.array([[2, 0, 1, 3], [1, 1, 1, 1]])
    rates = weighted_scores(scored, counts)
    for k, row in enumerate(counts):
        repeated = aggregate_row_scores([r for r, n in zip(scored, row) for _ in range(n)]).to_dict()
        for name, values in rates.items():
            assert values[k] == pytest.approx(repeated[name], nan_ok=True), name
