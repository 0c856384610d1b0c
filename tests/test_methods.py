"""Target selection rules on hand-made cases."""

from __future__ import annotations

import pytest

from ssr.methods import Candidate, MethodConfig, select_targets, selection_stats
from ssr.records import Record

R = [
    Record(id="a", question="q", gold="gold-a"),
    Record(id="u", question="q", gold="UNANS", answerable=False),
    Record(id="b", question="q", gold="gold-b"),
]
OWN = [Candidate("own-a", True, 0.9), Candidate("own-u", True, 1.0), Candidate("own-b", False, 0.1)]
REW = [Candidate("rew-a", False, 0.2), Candidate("rew-u", True, 1.0), Candidate("rew-b", True, 0.8)]


def pick(method, own=None, rew=None, **kw):
    return [(s.source, s.target) for s in select_targets(MethodConfig(name=method, **kw), R, own, rew)]


def test_sft_is_gold():
    assert pick("sft") == [("gold", "gold-a"), ("gold", "UNANS"), ("gold", "gold-b")]


def test_ssr_uses_accepted_own_answers():
    assert pick("ssr", OWN) == [("self", "own-a"), ("self", "own-u"), ("gold", "gold-b")]


def test_ssr_switch_for_unanswerable():
    assert pick("ssr", OWN, use_self_for_unanswerable=False) == [
        ("self", "own-a"),
        ("gold", "UNANS"),
        ("gold", "gold-b"),
    ]


def test_sdft_uses_accepted_rewrites():
    assert pick("sdft", None, REW) == [("gold", "gold-a"), ("rewrite", "rew-u"), ("rewrite", "rew-b")]


def test_s3ft_prefers_own_then_paraphrase_then_gold():
    own = [Candidate("own-a", False, 0.0), Candidate("own-u", True, 1.0), Candidate("own-b", False, 0.1)]
    assert pick("s3ft", own, REW) == [("gold", "gold-a"), ("self", "own-u"), ("paraphrase", "rew-b")]


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="sft, ssr, sdft, s3ft"):
        MethodConfig(name="dpo")


def test_missing_candidates_is_an_error():
    with pytest.raises(ValueError, match="own answer"):
        select_targets(MethodConfig(name="ssr"), R)


def test_stats_split_by_answerability():
    cfg = MethodConfig(name="ssr")
    sel = select_targets(cfg, R, OWN)
    st = selection_stats(cfg, sel, OWN)
    assert st.by_source["self"] == pytest.approx(2 / 3)
    assert st.by_source_unanswerable["self"] == 1.0 and st.by_source_answerable["self"] == 0.5
    assert st.judge_accept_rate_self == pytest.approx(2 / 3)
