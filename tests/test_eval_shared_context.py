"""SharedContextHFLM: each context forwarded once; results equal to lm-eval's HFLM."""

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from peft import LoraConfig, get_peft_model

from ssr.eval.shared_context import (
    SharedContextHFLM,
    length_batches,
    pack_group,
    prefix_clusters,
    supports_shared_context,
    tree_mask,
)
from ssr.eval.suite import run_suite
from ssr.models.loading import tiny_random_model


def test_pack_group_lays_out_context_once_and_predicting_positions():
    row = pack_group([5, 6, 7], [[8, 9, 10], [11]], members=[[3], [4]])
    assert row.tokens == [5, 6, 7, 8, 9]  # the last token of each continuation is never an input
    assert row.positions == [0, 1, 2, 3, 4]
    assert row.segments == [0, 0, 0, 1, 1]
    assert row.targets == [[(2, 8), (3, 9), (4, 10)], [(2, 11)]]
    two = pack_group([1, 2], [[3, 4], [5, 6]], members=[[0], [1]])
    assert two.positions == [0, 1, 2, 2]  # both continuations restart at the context length


def test_tree_mask_continuations_see_context_and_themselves_only():
    mask = tree_mask([0, 0, 1, 1, 2], length=6)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # continuation 2 does not see continuation 1
            [0, 0, 0, 0, 0, 1],  # padding sees itself only (no empty attention row)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_length_batches_bound_rows_and_padding():
    rows = [
        pack_group(list(range(n)), [[1]], members=[i]) for i, n in enumerate([40, 30, 20, 19, 10, 9, 8, 2])
    ]
    sizes = [[len(r.tokens) for r in b] for b in length_batches(rows, size=3)]
    assert sizes == [[40, 30, 20], [19, 10], [9, 8], [2]]


def test_prefix_clusters_share_long_prefixes_only():
    primer = list(range(100, 140))  # 40 tokens
    rows = [
        pack_group([*primer, 1, 2], [[7]], members=[[0]]),
        pack_group([*primer, 1, 3, 4], [[7]], members=[[1]]),
        pack_group([*primer, 5], [[7]], members=[[2]]),
        pack_group(list(range(50)), [[7]], members=[[3]]),  # nothing in common with the others
        pack_group(primer[:10], [[7]], members=[[4]]),  # too short a common part
    ]
    clusters = prefix_clusters(rows, min_prefix=32)
    assert [(n, sorted(r.members[0][0] for r in members)) for n, members in clusters] == [
        (40, [0, 1, 2]),
        (0, [3, 4]),
    ]
    # the prefix stops before every member's last context token
    alone = prefix_clusters(rows[:2], min_prefix=32)
    assert alone == [(41, alone[0][1])]
    same_but_one = prefix_clusters([rows[0], pack_group([*primer, 1], [[7]], members=[[9]])], 32)
    assert same_but_one[0][0] == 40  # = len(primer + [1]) - 1


def _model(tokenizer, attn: str, lora: bool):
    """The tiny model with ``attn`` attention, optionally under a (non-zero) LoRA adapter, in eval mode."""
    model = tiny_random_model(tokenizer, seed=0)
    model.set_attn_implementation(attn)
    if lora:
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    return model.eval()


def _primed_requests(tokenizer):
    enc = tokenizer.encode
    primer = enc("Q: What colour is the sky?\nA: Blue.\n\nQ: What is two plus two?\nA: Four.\n\n" * 3)
    questions = ["Q: Who wrote Hamlet?\nA:", "Q: Where is Paris?\nA:", "Q: Why?\nA:"]
    reqs = [(primer + enc(q), enc(a)) for q in questions for a in (" Shakespeare", " in France", " no idea")]
    reqs += [(enc("Short and alone"), enc(" yes"))]
    return [(("c", "x"), c, x) for c, x in reqs]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_states_give_hflm_loglikelihoods(tokenizer, attn, lora, monkeypatch):
    model = _model(tokenizer, attn, lora)
    requests = _primed_requests(tokenizer)
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests)
    lm = SharedContextHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    prefixes = []
    real = type(lm)._prefix_states
    monkeypatch.setattr(type(lm), "_prefix_states", lambda self, p: prefixes.append(len(p)) or real(self, p))
    shared = lm._loglikelihood_tokens(requests)
    assert len(prefixes) == 1 and prefixes[0] >= 60  # the primer, once for the three questions
    assert [g for _, g in shared] == [g for _, g in plain]
    assert [lp for lp, _ in shared] == pytest.approx([lp for lp, _ in plain], abs=1e-4)


def _requests(model, tokenizer):
    enc = tokenizer.encode
    ctx = enc("Question: which planet is red?\nAnswer:")
    greedy = model.generate(torch.tensor([ctx]), max_new_tokens=3, do_sample=False)[0, len(ctx) :].tolist()
    other = enc("The passage says")
    reqs = [(ctx, enc(" Mars is red")), (ctx, enc(" Venus")), (ctx, greedy), (ctx, enc(" the moon, surely"))]
    reqs += [(other, enc(" yes")), (other, enc(" no")), (enc("Lonely context"), enc(" with one ending"))]
    reqs += [(ctx, enc(" Venus"))]  # a duplicate (two tasks with the same docs): computed once, same answer
    return [(("c", "x"), c, x) for c, x in reqs]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lora", [False, True])
def test_loglikelihoods_equal_hflm(tokenizer, attn, lora):
    model = _model(tokenizer, attn, lora)
    requests = _requests(model, tokenizer)
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)._loglikelihood_tokens(requests)
    shared = SharedContextHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)._loglikelihood_tokens(
        requests
    )
    assert [g for _, g in shared] == [g for _, g in plain]
    assert any(g for _, g in plain)  # the greedy continuation is recognised as such
    assert shared[-1] == shared[1]  # the duplicate request got the very same answer
    assert [lp for lp, _ in shared] == pytest.approx([lp for lp, _ in plain], abs=1e-4)


def test_too_long_groups_use_hflm_truncation(tokenizer):
    model = tiny_random_model(tokenizer, seed=0).eval()
    requests = _requests(model, tokenizer)
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=8)
    shared = SharedContextHFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=8)
    expected = plain._loglikelihood_tokens(requests)
    assert [lp for lp, _ in shared._loglikelihood_tokens(requests)] == pytest.approx(
        [lp for lp, _ in expected]
    )


def test_run_suite_scores_unchanged(tiny_model, tokenizer, data_root, monkeypatch):
    tasks = ["ssr_arc_easy", "ssr_hellaswag", "ssr_truthfulqa_mc2", "ssr_mmlu"]
    kwargs = {"limits": {"default": 3}, "batch_size": 8, "data_root": data_root}
    shared = run_suite(tiny_model, tokenizer, tasks, **kwargs)
    monkeypatch.setattr(
        "ssr.eval.shared_context.SharedContextHFLM._loglikelihood_tokens", HFLM._loglikelihood_tokens
    )
    plain = run_suite(tiny_model, tokenizer, tasks, **kwargs)
    assert shared.keys() == plain.keys()
    for task, metrics in plain.items():
        assert shared[task] == pytest.approx(metrics, abs=1e-6), task


def test_supports_shared_context_refuses_softcapped_heads(tokenizer):
    model = tiny_random_model(tokenizer, seed=0)
    assert supports_shared_context(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_shared_context(model)
