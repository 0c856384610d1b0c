"""Target selection rules on hand-made cases."""

from __future__ import annotations

import pytest

from ssr.data.records import Record
from ssr.selection.methods import Candidate, MethodConfig, select_targets, selection_stats

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
    with pytest.raises(ValueError, match="sft, dft, ssr, self_only, sdft, sdft_rewrite, s3ft"):
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


def test_dft_learns_gold_and_needs_no_judge():
    assert pick("dft") == pick("sft")
    assert not MethodConfig(name="dft").needs_judge and MethodConfig(name="dft").loss == "ce"


def test_self_only_keeps_accepted_own_answers_and_drops_the_rest():
    from ssr.selection.methods import trained

    sel = select_targets(MethodConfig(name="self_only"), R, OWN)
    assert [(s.source, s.target) for s in sel] == [("self", "own-a"), ("self", "own-u"), ("dropped", "")]
    assert [s.id for s in trained(sel)] == ["a", "u"]
    assert selection_stats(MethodConfig(name="self_only"), sel, OWN).by_source["dropped"] == pytest.approx(
        1 / 3
    )
    # without own refusals the unanswerable row is dropped too
    no_refusals = select_targets(MethodConfig(name="self_only", use_self_for_unanswerable=False), R, OWN)
    assert [s.source for s in no_refusals] == ["self", "dropped", "dropped"]


def test_self_only_with_nothing_accepted_is_a_clear_error():
    rejected = [Candidate(c.text, False, 0.0) for c in OWN]
    with pytest.raises(ValueError, match="accepted none of the 3 own answers"):
        select_targets(MethodConfig(name="self_only"), R, rejected)


def test_sdft_rewrite_is_the_same_method_as_sdft():
    assert MethodConfig(name="sdft_rewrite").name == "sdft"
    assert pick("sdft_rewrite", None, REW) == pick("sdft", None, REW)
    with pytest.raises(ValueError, match=r"method\.loss"):
        MethodConfig(name="sft", loss="focal")


def test_dft_loss_weights_each_tokens_ce_by_its_detached_probability():
    import math

    import torch

    from ssr.models.losses import summed_token_loss

    # two tokens: p = 1/2 (logits 0, 0) and p = 3/4 (logits 0, log 3)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]], requires_grad=True)
    targets = torch.tensor([0, 1])
    ce = summed_token_loss(logits, targets, "ce")
    dft = summed_token_loss(logits, targets, "dft")
    assert ce.item() == pytest.approx(math.log(2) + math.log(4 / 3))
    assert dft.item() == pytest.approx(0.5 * math.log(2) + 0.75 * math.log(4 / 3))
    # the weight is detached: d dft / d logits = p * d ce / d logits, token by token
    (grad_dft,) = torch.autograd.grad(dft, logits)
    (grad_ce,) = torch.autograd.grad(summed_token_loss(logits, targets, "ce"), logits)
    assert torch.allclose(grad_dft, grad_ce * torch.tensor([[0.5], [0.75]]))
    with pytest.raises(ValueError, match="unknown loss"):
        summed_token_loss(logits, targets, "focal")


def test_module_loss_on_the_tiny_model_matches_the_hand_computed_dft(tiny_model):
    import torch
    import torch.nn.functional as F

    from ssr.training.module import response_token_loss

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    labels = torch.tensor([[-100, -100, 42, 99, 7]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logp = F.log_softmax(tiny_model(input_ids=ids).logits[0, 1:4].float(), dim=-1)
    token_logp = logp[torch.arange(3), torch.tensor([42, 99, 7])]
    expected_ce = -token_logp.sum()
    expected_dft = -(token_logp * token_logp.exp()).sum()
    with torch.no_grad():
        ce = response_token_loss(tiny_model, ids, mask, labels)
        dft = response_token_loss(tiny_model, ids, mask, labels, loss="dft")
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert dft.item() == pytest.approx(expected_dft.item(), rel=1e-5)
    assert dft.item() < ce.item() / 1000  # a random model's probabilities are ~1/vocab


def test_ssr_train_with_dft_and_the_loss_option(tiny_cfg):
    from ssr.cli.train import train

    assert tiny_cfg("method=ssr").module.loss == "ce"
    assert tiny_cfg("method=ssr", "loss=dft").module.loss == "dft"
    cfg = tiny_cfg("method=dft")
    assert cfg.module.loss == "dft"
    summary = train(cfg)
    assert summary["selection"]["by_source"]["gold"] == 1.0
    # DFT weights each token by p (~1/vocab on a random model): CE would be ~ln(vocab) ~ 11
    assert 0 < summary["metrics"]["train/loss"] < 0.01


def test_ssr_train_self_only_trains_on_accepted_rows_only(tiny_cfg):
    from ssr.cli.train import train

    # threshold 0: the rule accepts every answerable row; an own answer to an unanswerable row
    # that does not refuse is rejected, so those rows are dropped
    summary = train(tiny_cfg("method=self_only", "judge.threshold=0.0"))
    counts = summary["selection"]["counts"]
    assert counts["self"] == summary["train_rows"] and counts.get("dropped", 0) > 0
    assert counts["self"] + counts["dropped"] == 16
    with pytest.raises(ValueError, match="accepted none of the 16 own answers"):
        train(tiny_cfg("method=self_only", "judge.threshold=1.0", "data.max_train_rows=16"))
