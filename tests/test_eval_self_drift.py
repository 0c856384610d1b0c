"""Self-drift on a tiny random Llama with the real SmolLM2 tokenizer."""

import json
from dataclasses import replace

import pytest
import torch

from ssr.eval.self_drift import (
    PROMPTS_FILE,
    SelfDriftConfig,
    SelfDriftReference,
    build_reference,
    load_prompts,
    prompt_ids,
    response_nll,
    self_drift_scores,
    weights_fingerprint,
)
from ssr.models.loading import tiny_random_model

CFG = SelfDriftConfig(limit=5, max_new_tokens=6, batch_size=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_packaged_prompts_are_varied_and_unique():
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines()]
    assert 40 <= len(rows) <= 64
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert {r["category"] for r in rows} >= {"fact", "howto", "math", "writing"}
    assert load_prompts(limit=3) == [r["prompt"] for r in rows[:3]]


def test_bad_prompt_file_names_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        load_prompts(bad)


def test_reference_is_cached_and_base_scores_zero_increase(tokenizer, cache):
    model = tiny_random_model(tokenizer, seed=1).eval()
    ref = build_reference(model, tokenizer, CFG)
    assert len(ref.answers) == 5 and ref.n_tokens > 0 and ref.base_nll > 0
    assert len(list((cache / "self_drift").glob("*.json"))) == 1
    scores = self_drift_scores(model, tokenizer, ref, batch_size=2)
    assert scores["nll"] == pytest.approx(ref.base_nll, rel=1e-5)
    assert scores["nll_increase"] == pytest.approx(0.0, abs=1e-5)
    # second call: same fingerprint -> loaded from cache, not regenerated
    again = build_reference(model, tokenizer, CFG)
    assert again == ref


def test_changed_weights_raise_nll_and_change_fingerprint(tokenizer, cache):
    model = tiny_random_model(tokenizer, seed=1).eval()
    ref = build_reference(model, tokenizer, CFG)
    fp = weights_fingerprint(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    assert weights_fingerprint(model) != fp
    scores = self_drift_scores(model, tokenizer, ref)
    assert scores["nll_increase"] > 0
    assert scores["nll_increase_rel"] == pytest.approx(scores["nll_increase"] / ref.base_nll)


def test_nll_counts_only_response_tokens(tokenizer):
    model = tiny_random_model(tokenizer, seed=2).eval()
    prompts, answers = ["Say hi.", "Count to three."], ["Hi there", "One two three"]
    stops = [tokenizer.eos_token_id, None]
    total, count = response_nll(model, tokenizer, prompts, answers, stops, batch_size=2)
    expected = len(tokenizer("Hi there", add_special_tokens=False)["input_ids"]) + 1
    expected += len(tokenizer("One two three", add_special_tokens=False)["input_ids"])
    assert count == expected
    # batching/padding does not change the result
    total_1, _ = response_nll(model, tokenizer, prompts, answers, stops, batch_size=1)
    assert total == pytest.approx(total_1, rel=1e-4)
    # a manual, unbatched computation for the first row
    p = prompt_ids(tokenizer, prompts[0])
    r = tokenizer("Hi there", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
    manual = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(r), reduction="sum").item()
    single, _ = response_nll(model, tokenizer, prompts[:1], answers[:1], stops[:1])
    assert single == pytest.approx(manual, rel=1e-4)


def test_peft_reference_uses_base_weights(tokenizer, cache):
    from peft import LoraConfig, get_peft_model

    base = tiny_random_model(tokenizer, seed=3).eval()
    ref = build_reference(base, tokenizer, replace(CFG, cache=False))
    wrapped = get_peft_model(
        tiny_random_model(tokenizer, seed=3), LoraConfig(r=4, target_modules="all-linear")
    )
    assert weights_fingerprint(wrapped) == weights_fingerprint(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained" adapter
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    wrapped.eval()
    ref_from_peft = build_reference(wrapped, tokenizer, replace(CFG, cache=False))
    assert ref_from_peft.answers == ref.answers
    assert ref_from_peft.base_nll == pytest.approx(ref.base_nll, rel=1e-5)
    # scoring uses the adapter (the NLL moves); the reference did not
    assert abs(self_drift_scores(wrapped, tokenizer, ref)["nll_increase"]) > 1e-3


def test_reference_round_trips_and_rejects_garbage(tokenizer, tmp_path, cache):
    model = tiny_random_model(tokenizer, seed=4).eval()
    ref = build_reference(model, tokenizer, CFG)
    path = ref.save(tmp_path / "run" / "ref.json")
    assert SelfDriftReference.load(path) == ref
    assert build_reference(model, tokenizer, SelfDriftConfig(reference_path=str(path))) == ref
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json"):
        SelfDriftReference.load(tmp_path / "bad.json")
