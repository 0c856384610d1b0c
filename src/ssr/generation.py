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

    def decode(ids: list[list[int]]) -> list[str]:
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    new_ids = generate_ids(
        model,
        [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
        tokenizer.pad_token_id,
        kwargs,
        batch_size,
        autocast_dtype=precision_dtype(precision, device.type),
        on_batch=(lambda idx, ids: on_batch(idx, decode(ids))) if on_batch else None,
        sample_seed=decoding.seed if decoding.do_sample else None,
        progress=progress,
    )
    return decode(new_ids)


def vllm_generate(
    model_path: str, prompts: list[str], decoding: DecodingConfig, **engine_kwargs: Any
) -> list[str]:
    """vLLM backend for GPU users (optional extra ``ssr[vllm]``)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ImportError("generator=vllm needs vLLM: pip install 'ssr[vllm]' (GPU only)") from err
    llm = LLM(model=model_path, **engine_kwargs)  # pragma: no cover
    params = SamplingParams(
        max_tokens=decoding.max_new_tokens,
        seed=decoding.seed,  # pragma: no cover
        temperature=decoding.temperature if decoding.do_sample else 0.0,
        top_p=decoding.top_p if decoding.do_sample else 1.0,
    )
    return [o.outputs[0].text.strip() for o in llm.generate(prompts, params)]  # pragma: no cover


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
