"""generator=vllm without a GPU: a stand-in for ``vllm.LLM`` records what the real engine would get.

The prompts must be the hf path's token ids (the chat template's one BOS, no second one from
tokenizing the text again), and the generation cache must grow chunk by chunk.
"""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from tokenizers.processors import TemplateProcessing

import ssr.generation.hf as hf_generation
import ssr.generation.vllm as vllm_generation
from ssr.data.prompts import PromptConfig, generation_prompt
from ssr.data.records import Record
from ssr.generation.config import DecodingConfig, GeneratorConfig
from ssr.generation.generator import BaseModelGenerator
from ssr.generation.hf import hf_generate
from ssr.models.loading import ModelSpec, tiny_random_model


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    """The SmolLM2 tokenizer made Llama-3-like: its chat template writes the BOS and tokenizing with
    special tokens adds one more (the double-BOS trap)."""
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = "<|endoftext|>"  # SmolLM2's own BOS is <|im_start|>, which starts every turn
    bos, bos_id = tok.bos_token, tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    assert tok("x")["input_ids"][0] == bos_id  # the trap is armed
    return tok


@dataclass
class _Completion:
    token_ids: list[int]


@dataclass
class _RequestOutput:
    outputs: list[_Completion]


class FakeLLM:
    """Records the prompts of every ``generate`` call and what the cache held at that moment."""

    instances: ClassVar[list[FakeLLM]] = []
    reply: ClassVar[list[int]] = []
    cache_path: ClassVar[Path | None] = None

    def __init__(self, model: str, **kwargs) -> None:
        self.model, self.kwargs, self.calls = model, kwargs, []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        path = FakeLLM.cache_path
        rows = len(path.read_text().splitlines()) if path and path.exists() else 0
        self.calls.append({"prompts": prompts, "params": sampling_params, "cache_rows": rows})
        return [_RequestOutput([_Completion([*FakeLLM.reply, i])]) for i, _ in enumerate(prompts)]


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch, bos_tokenizer):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    FakeLLM.reply = bos_tokenizer(" The answer", add_special_tokens=False)["input_ids"]
    FakeLLM.reply.append(bos_tokenizer.eos_token_id)
    yield FakeLLM
    FakeLLM.cache_path = None


def _records(n: int) -> list[Record]:
    return [
        Record(
            id=str(i), question=f"What is item {i}?", gold="x", document=f"Item {i} is a box " * (1 + i % 3)
        )
        for i in range(n)
    ]


def test_vllm_gets_the_hf_paths_token_ids_with_one_bos_and_writes_the_cache_per_chunk(
    fake_vllm, bos_tokenizer, tmp_path, monkeypatch
):
    prompts = [generation_prompt(bos_tokenizer, r, PromptConfig()) for r in _records(5)]
    bos = bos_tokenizer.bos_token_id

    # the hf path's prompt ids, captured where they enter the generate loop
    seen_by_hf: list[list[int]] = []
    real_generate_ids = hf_generation.generate_ids

    def capture(model, prompt_ids, *args, **kwargs):
        seen_by_hf.extend(prompt_ids)
        return real_generate_ids(model, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(hf_generation, "generate_ids", capture)
    tiny = tiny_random_model(bos_tokenizer, seed=0)
    hf_generate(tiny, bos_tokenizer, prompts, DecodingConfig(max_new_tokens=2), batch_size=8, progress=False)

    cfg = GeneratorConfig(backend="vllm", batch_size=2, vllm_kwargs={"dtype": "bfloat16"})
    generator = BaseModelGenerator(ModelSpec(name_or_path="tiny-random"), cfg, tmp_path / "cache")
    generator.tokenizer = bos_tokenizer
    FakeLLM.cache_path = generator.cache_path
    texts, stats = generator.generate(prompts)

    [llm] = fake_vllm.instances  # one engine for all chunks
    assert llm.kwargs == {"dtype": "bfloat16"}
    sent = [p["prompt_token_ids"] for call in llm.calls for p in call["prompts"]]
    assert sent == seen_by_hf and len(sent) == 5
    for ids in sent:
        assert ids[0] == bos and ids.count(bos) == 1, "BOS added a second time"
    # the string the engine was given before: vLLM would have tokenized it into two BOS
    assert bos_tokenizer(prompts[0])["input_ids"][:2] == [bos, bos]

    # chunks of generator.batch_size, each written to the cache before the next is generated
    assert [len(c["prompts"]) for c in llm.calls] == [2, 2, 1]
    assert [c["cache_rows"] for c in llm.calls] == [0, 2, 4]
    assert stats.generated == 5 and texts == ["The answer"] * 5
    params = llm.calls[0]["params"].kwargs
    assert params["temperature"] == 0.0 and params["max_tokens"] == cfg.decoding.max_new_tokens
    assert params["stop_token_ids"] == [bos_tokenizer.eos_token_id]

    # a second run is served from the cache: the engine is not called again
    again, stats = generator.generate(prompts)
    assert again == texts and stats.cached == 5 and len(llm.calls) == 3


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'ssr\[vllm\]'"):
        vllm_generation.load_vllm("some/model")
