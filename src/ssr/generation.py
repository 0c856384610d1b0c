"""Batched generation behind one function, with a resumable cache (hf and vllm backends)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.cache import JsonlCache
from ssr.precision import autocast_dtype as precision_dtype
from ssr.records import content_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings; part of every generation cache key."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def hf_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        else:  # keep generation_config's sampling defaults from warning under greedy decoding
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


def generation_key(model_fingerprint: str, prompt: str, decoding: DecodingConfig) -> str:
    return content_hash("gen", model_fingerprint, prompt, asdict(decoding))


@torch.inference_mode()
def generate_ids(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    pad_token_id: int,
    gen_kwargs: dict[str, Any],
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    sample_seed: int | None = None,
    progress: bool = False,
) -> list[list[int]]:
    """The one batched ``generate`` loop: longest prompts first, left-padded batches.

    Returns the new token ids of every prompt in input order (padding after an early stop
    included; callers cut at their stop tokens). ``on_batch(indices, new_ids)`` runs after each
    batch. ``sample_seed`` reseeds torch before each batch (``seed + batch start``) so sampled
    outputs do not depend on what ran before. The model is left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    bar = tqdm(total=len(prompt_ids), desc="generate", unit="row", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in idx)
            pads = [width - len(prompt_ids[i]) for i in idx]
            input_ids = torch.tensor(
                [[pad_token_id] * n + prompt_ids[i] for n, i in zip(pads, idx)], device=device
            )
            mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads], device=device)
            if sample_seed is not None:
                torch.manual_seed(sample_seed + start)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model.generate(
                    input_ids=input_ids, attention_mask=mask, pad_token_id=pad_token_id, **gen_kwargs
                )
            new = out[:, width:].tolist()
            for i, ids in zip(idx, new):
                results[i] = ids
            if on_batch:
                on_batch(idx, new)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return results


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered chat prompts. The chat template already wrote the special tokens (a
    BOS among them, for Llama-3 or Mistral), so none are added again: every backend gets these."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def decode_new_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]]) -> list[str]:
    """Generated ids -> stripped texts (special tokens, e.g. the end-of-turn, dropped)."""
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def hf_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    decoding: DecodingConfig,
    batch_size: int = 16,
    precision: str | torch.dtype | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
    cache_implementation: str | None = None,
) -> list[str]:
    """Texts generated for already-rendered prompts, in input order (see :func:`generate_ids`).

    ``precision`` is the autocast setting (``auto``, ``bf16-mixed``, ``32-true``, ``bf16``, ``none``;
    see :mod:`ssr.precision`); ``None`` runs the weights as stored. ``on_batch(indices, texts)`` is
    called after each batch (the cache writes there), so an interruption loses at most one batch.
    ``cache_implementation`` is passed to ``generate`` (``"static"`` preallocates the KV cache
    instead of concatenating it at every step).
    """
    device = next(model.parameters()).device
    kwargs = {**decoding.hf_kwargs(), "eos_token_id": [tokenizer.eos_token_id]}
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation

    new_ids = generate_ids(
        model,
        prompt_token_ids(tokenizer, prompts),
        tokenizer.pad_token_id,
        kwargs,
        batch_size,
        autocast_dtype=precision_dtype(precision, device.type),
        on_batch=(lambda idx, ids: on_batch(idx, decode_new_tokens(tokenizer, ids))) if on_batch else None,
        sample_seed=decoding.seed if decoding.do_sample else None,
        progress=progress,
    )
    return decode_new_tokens(tokenizer, new_ids)


def load_vllm(model_path: str, **engine_kwargs: Any) -> Any:
    """A ``vllm.LLM`` engine (GPU; optional extra ``ssr[vllm]``); build it once per generator."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ImportError("generator=vllm needs vLLM: pip install 'ssr[vllm]' (GPU only)") from err
    return LLM(model=model_path, **engine_kwargs)


def vllm_generate(
    llm: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    decoding: DecodingConfig,
    batch_size: int = 256,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
) -> list[str]:
    """vLLM backend: the same prompt token ids and decoding of the new ids as :func:`hf_generate`.

    Prompts go in as token ids (``TokensPrompt``): given text, vLLM would tokenize it with special
    tokens again (a second BOS on Llama-3 / Mistral). Chunks of ``batch_size`` prompts (vLLM
    batches inside a chunk); ``on_batch(indices, texts)`` runs after each, so the cache is
    written as generation goes. Generation stops at the tokenizer's EOS, as the hf path does.
    """
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=decoding.max_new_tokens,
        seed=decoding.seed,
        temperature=decoding.temperature if decoding.do_sample else 0.0,
        top_p=decoding.top_p if decoding.do_sample else 1.0,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    ids = prompt_token_ids(tokenizer, prompts)
    texts: list[str] = []
    for start in range(0, len(ids), batch_size):
        chunk = [{"prompt_token_ids": p} for p in ids[start : start + batch_size]]
        outputs = llm.generate(chunk, params, use_tqdm=progress)
        new = decode_new_tokens(tokenizer, [list(o.outputs[0].token_ids) for o in outputs])
        texts.extend(new)
        if on_batch:
            on_batch(list(range(start, start + len(chunk))), new)
    return texts


@dataclass
class GenerationStats:
    rows: int = 0
    cached: int = 0
    generated: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def cached_generate(
    prompts: list[str],
    cache: JsonlCache,
    model_fingerprint: str,
    decoding: DecodingConfig,
    generate_fn: Callable[..., list[str]],
    backend: str = "hf",
) -> tuple[list[str], GenerationStats]:
    """Generate only the prompts missing from the cache; every new batch is written before the next.

    ``generate_fn(prompts, on_batch)`` runs the backend; it is not called when everything is cached.
    """
    keys = [generation_key(model_fingerprint, p, decoding) for p in prompts]
    rows = [cache.get(k) for k in keys]
    missing = [i for i, r in enumerate(rows) if r is None]
    stats = GenerationStats(rows=len(prompts), cached=len(prompts) - len(missing))
    # duplicate prompts generate once
    todo: dict[str, int] = {}
    for i in missing:
        todo.setdefault(keys[i], i)
    unique = list(todo.values())
    if unique:
        t0 = time.perf_counter()

        def write(batch_idx: list[int], texts: list[str]) -> None:
            cache.put_many(
                (keys[unique[j]], {"text": t, "backend": backend}) for j, t in zip(batch_idx, texts)
            )

        generate_fn([prompts[i] for i in unique], write)
        stats.generated = len(unique)
        stats.seconds = time.perf_counter() - t0
        log.info(
            "generated %d rows in %.1fs (%.2f rows/s); %d from cache",
            len(unique),
            stats.seconds,
            stats.rows_per_s,
            stats.cached,
        )
    texts = []
    for k in keys:
        row = cache.peek(k)
        if row is None:
            raise RuntimeError(f"generation backend returned no text for cache key {k}")
        texts.append(row["text"])
    return texts, stats
