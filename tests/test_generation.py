"""The one batched generate loop: batching, padding and ordering do not change greedy outputs."""

from __future__ import annotations

import torch

from ssr.eval.self_drift import generate_answers
from ssr.generation.config import DecodingConfig
from ssr.generation.hf import generate_ids, hf_generate
from ssr.models.loading import tiny_random_model

PROMPTS = [
    "Box 1 is red.",
    "Where is box 2? " * 6,
    "Colour?",
    "Box 3 is under the table, next to box 4. " * 2,
]


def _one_at_a_time(model, ids, max_new):
    out = []
    for row in ids:
        gen = model.generate(
            input_ids=torch.tensor([row]),
            attention_mask=torch.ones(1, len(row), dtype=torch.long),
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=False,
            pad_token_id=0,
        )
        out.append(gen[0, len(row) :].tolist())
    return out


def test_batched_left_padded_generation_equals_one_at_a_time(tokenizer):
    model = tiny_random_model(tokenizer, seed=3).eval()
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    kwargs = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    seen = []
    batched = generate_ids(
        model,
        ids,
        tokenizer.pad_token_id,
        kwargs,
        batch_size=3,
        autocast_dtype=None,
        on_batch=lambda idx, new: seen.append(idx),
    )
    assert batched == _one_at_a_time(model, ids, 5)
    # longest prompts first, every prompt exactly once, results back in input order
    assert seen == [[1, 3, 0], [2]]
    model.train()
    generate_ids(model, ids[:1], tokenizer.pad_token_id, kwargs, autocast_dtype=None)
    assert model.training  # mode restored


def test_hf_generate_and_self_drift_answers_share_the_loop(tokenizer):
    model = tiny_random_model(tokenizer, seed=3)
    decoding = DecodingConfig(max_new_tokens=5)
    texts = hf_generate(model, tokenizer, PROMPTS, decoding, batch_size=2, precision=None, progress=False)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    eos = tokenizer.eos_token_id
    ref = _one_at_a_time(model, ids, 5)
    cut = [r[: r.index(eos)] if eos in r else r for r in ref]
    assert texts == [tokenizer.decode(r, skip_special_tokens=True).strip() for r in cut]
    answers, stops = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=3)
    assert len(answers) == len(stops) == len(PROMPTS)
    assert {s for s in stops if s is not None} <= {eos, model.generation_config.eos_token_id}
