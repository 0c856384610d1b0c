"""The generation engines: the continuous engine returns what transformers' greedy generate returns,
samples reproducibly, runs a trained adapter (never the base by mistake), and ``auto`` follows the
probe's timings."""

from __future__ import annotations

import pytest
import torch

from ssr.eval.self_drift import generate_answers
from ssr.generation import engine as engines
from ssr.generation.config import DecodingConfig, GeneratorConfig
from ssr.generation.continuous import Sampling, continuous_generate_ids, unsupported_reason
from ssr.generation.engine import generate_ids, resolve_engine
from ssr.generation.hf import hf_generate
from ssr.models.loading import apply_peft, tiny_random_model

PROMPTS = [
    "Box 1 is red.",
    "Where is box 2? " * 6,
    "Colour?",
    "Box 3 is under the table, next to box 4. " * 2,
    "Say something about boxes and tables, please.",
]
LORA = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}


def _ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def _greedy(tokenizer, max_new: int = 12) -> dict:
    return {
        **DecodingConfig(max_new_tokens=max_new).hf_kwargs(),
        "eos_token_id": [tokenizer.eos_token_id],
    }


def _one_at_a_time(model, ids, kwargs) -> list[list[int]]:
    out = []
    for row in ids:
        gen = model.generate(input_ids=torch.tensor([row]), pad_token_id=0, **kwargs)
        out.append(gen[0, len(row) :].tolist())
    return out


def _trained_adapter(tokenizer, seed: int = 3):
    """A LoRA model whose adapter moved away from zero (as training leaves it)."""
    model = apply_peft(tiny_random_model(tokenizer, seed=seed), LORA)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    return model.eval()


def _mid_decode_stop(reference: list[list[int]]) -> int:
    """A token that ends two or more rows in mid-decode (not at their first token) and not all
    rows: their slots free up at different steps, so slots are refilled and compacted."""
    for token in sorted({t for row in reference for t in row}):
        firsts = [row.index(token) if token in row else None for row in reference]
        if sum(1 for f in firsts if f is not None and 1 <= f < 14) >= 2 and None in firsts:
            return token
    raise AssertionError("no such token in this model's outputs")


@pytest.mark.parametrize("slots", [1, 2, 64])
def test_continuous_equals_transformers_greedy_fp32(tokenizer, slots):
    """Same ids as transformers' greedy generate one prompt at a time (fp32), whatever the slot
    count (slots refilled as rows finish, compacted, longest prompts first)."""
    # a larger init than the default: varied outputs (the default repeats one token)
    model = tiny_random_model(tokenizer, {"num_hidden_layers": 3, "initializer_range": 0.3}, seed=2).eval()
    ids = _ids(tokenizer)
    reference = _one_at_a_time(model, ids, {"max_new_tokens": 16, "do_sample": False})
    stop = _mid_decode_stop(reference)
    kwargs = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": [stop]}
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in reference]
    assert any(len(row) < 16 for row in expected) and any(len(row) == 16 for row in expected)
    got = continuous_generate_ids(model, ids, Sampling(16, frozenset([stop])), slots=slots)
    assert got == expected
    # the same through the one interface, and what the hf engine returns (padding cut at the stop)
    assert generate_ids(model, ids, 0, kwargs, engine="continuous") == expected
    hf = generate_ids(model, ids, 0, kwargs, engine="hf")
    assert [row[: len(e)] for row, e in zip(hf, expected, strict=True)] == expected


def test_rows_ending_at_their_first_token_leave_no_gap(tokenizer):
    """A prompt of a prefilled batch that ends at its first token frees its slot at once; the
    rows after it move up with their cache rows."""
    model = tiny_random_model(tokenizer, {"num_hidden_layers": 3, "initializer_range": 0.3}, seed=2).eval()
    ids = _ids(tokenizer)
    reference = _one_at_a_time(model, ids, {"max_new_tokens": 8, "do_sample": False})
    stop = reference[3][0]  # the second-longest prompt: early in the batch
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in reference]
    assert len(expected[3]) == 1 and sum(len(row) > 1 for row in expected) >= 2
    assert continuous_generate_ids(model, ids, Sampling(8, frozenset([stop])), slots=8) == expected


def test_hf_generate_texts_match_between_engines(tokenizer):
    model = tiny_random_model(tokenizer, seed=2).eval()
    decoding = DecodingConfig(max_new_tokens=10)
    texts = {
        name: hf_generate(model, tokenizer, PROMPTS, decoding, precision=None, progress=False, engine=name)
        for name in ("hf", "continuous")
    }
    assert texts["hf"] == texts["continuous"]
    answers, stops = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, engine="continuous")
    assert answers == generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, engine="hf")[0]
    assert len(stops) == len(PROMPTS)


def test_bf16_compute_stays_close_to_fp32(tokenizer):
    """bf16 compute (weights cast once, fp32 residual stream) keeps most greedy paths."""
    model = tiny_random_model(tokenizer, seed=4).eval()
    ids = _ids(tokenizer)
    fp32 = continuous_generate_ids(model, ids, Sampling(8))
    bf16 = continuous_generate_ids(model, ids, Sampling(8), dtype=torch.bfloat16)
    assert sum(a[:4] == b[:4] for a, b in zip(fp32, bf16, strict=True)) >= 3


def test_sampling_is_seeded_and_independent_of_neighbours(tokenizer):
    model = tiny_random_model(tokenizer, seed=1).eval()
    ids = _ids(tokenizer)
    sampling = Sampling(10, do_sample=True, temperature=1.5, top_p=0.95, top_k=50, seed=7)
    first = continuous_generate_ids(model, ids, sampling, slots=2)
    assert continuous_generate_ids(model, ids, sampling, slots=3) == first
    # a row's sample is drawn from its own generator (seed + its index): the others do not matter
    alone = continuous_generate_ids(model, ids[:1], sampling)
    assert alone == first[:1]
    other_seed = continuous_generate_ids(model, ids, Sampling(10, do_sample=True, temperature=1.5, seed=8))
    greedy = continuous_generate_ids(model, ids, Sampling(10))
    assert other_seed != first and first != greedy


@pytest.mark.parametrize("name", ["hf", "continuous"])
def test_trained_adapter_generates_not_the_base(tokenizer, name):
    """Each engine generates with the adapter (merged into the continuous engine's weights): its
    outputs differ from the base's, equal transformers' PEFT forward, and the base comes back
    when the adapter is disabled."""
    model = _trained_adapter(tokenizer)
    base = tiny_random_model(tokenizer, seed=3).eval()
    ids, kwargs = _ids(tokenizer), _greedy(tokenizer)
    trained = generate_ids(model, ids, 0, kwargs, engine=name)
    base_out = generate_ids(base, ids, 0, kwargs, engine=name)
    assert trained != base_out
    assert [r[:12] for r in trained] == [r[:12] for r in _one_at_a_time(model, ids, kwargs)]
    with model.disable_adapter():
        assert generate_ids(model, ids, 0, kwargs, engine=name) == base_out


def test_auto_follows_injected_probe_timings(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path))
    model = tiny_random_model(tokenizer).eval()
    fast = {"hf": 10.0, "continuous": 50.0}
    choice = resolve_engine("auto", model, None, probe=fast.__getitem__)
    assert (choice.engine, choice.tokens_per_s) == ("continuous", fast)
    slow = {"hf": 90.0, "continuous": 50.0}
    assert resolve_engine("auto", model, None, probe=slow.__getitem__).engine == "hf"
    # a near tie goes to continuous (the probe cannot show its scheduling gains); hf needs > HF_MARGIN
    tie = {"hf": 50.0 * engines.HF_MARGIN * 0.99, "continuous": 50.0}
    near = resolve_engine("auto", model, None, probe=tie.__getitem__)
    assert near.engine == "continuous" and "hf wins only beyond" in near.reason
    beyond = {"hf": 50.0 * engines.HF_MARGIN * 1.01, "continuous": 50.0}
    assert resolve_engine("auto", model, None, probe=beyond.__getitem__).engine == "hf"
    assert resolve_engine("hf", model, None, probe=fast.__getitem__).engine == "hf"
    assert any(c["engine"] == "hf" for c in engines.resolved_choices())
    with pytest.raises(ValueError, match="generation engine must be one of"):
        resolve_engine("fast", model, None)


def test_auto_probe_is_measured_once_and_cached(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path))
    model = tiny_random_model(tokenizer).eval()
    timed: list[str] = []

    def timer(name: str) -> float:
        timed.append(name)
        return {"hf": 1.0, "continuous": 2.0}[name]

    monkeypatch.setattr(engines, "measure", lambda *a: timer)
    first = resolve_engine("auto", model, torch.bfloat16)
    again = resolve_engine("auto", model, torch.bfloat16)
    assert timed == ["hf", "continuous"]  # the second resolve read the cache
    assert (first.engine, again.engine, again.cached) == ("continuous", "continuous", True)
    assert list((tmp_path / "generation_engine").glob("*.json"))


def test_unsupported_models_and_arguments_fall_back_to_hf(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path))
    model = tiny_random_model(tokenizer).eval()
    model.config.hidden_act = "gelu"
    assert "activation" in unsupported_reason(model)
    choice = resolve_engine("auto", model, None)
    assert choice.engine == "hf" and "unsupported" in choice.reason
    with pytest.raises(ValueError, match="cannot run this model"):
        resolve_engine("continuous", model, None)
    model.config.hidden_act = "silu"
    with pytest.raises(ValueError, match="min_new_tokens"):
        generate_ids(
            model, _ids(tokenizer), 0, {"max_new_tokens": 2, "min_new_tokens": 2}, engine="continuous"
        )


def test_generator_config_rejects_unknown_engine():
    with pytest.raises(ValueError, match=r"unknown generator\.engine"):
        GeneratorConfig(engine="vllm")
