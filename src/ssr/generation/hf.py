"""In-process generation with a Hugging Face model: prompt ids, decoded texts, and the text wrapper
around the one generation call (:func:`ssr.generation.engine.generate_ids`, re-exported here)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.generation.config import DecodingConfig
from ssr.generation.engine import AUTO, generate_ids
from ssr.runtime.precision import autocast_dtype as precision_dtype

__all__ = ["decode_new_tokens", "generate_ids", "hf_generate", "prompt_token_ids"]


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
    engine: str | None = AUTO,
) -> list[str]:
    """Texts generated for already-rendered prompts, in input order (see :func:`generate_ids`).

    ``precision`` is the autocast setting (``auto``, ``bf16-mixed``, ``32-true``, ``bf16``, ``none``;
    see :mod:`ssr.runtime.precision`); ``None`` runs the weights as stored. ``on_batch(indices, texts)`` is
    called after each batch (the cache writes there), so an interruption loses at most one batch.
    ``cache_implementation`` is passed to ``generate`` (``"static"`` preallocates the KV cache
    instead of concatenating it at every step; engine ``hf`` only). ``engine``: see
    :mod:`ssr.generation.engine` (``auto``: measured on this machine).
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
        engine=engine,
    )
    return decode_new_tokens(tokenizer, new_ids)
