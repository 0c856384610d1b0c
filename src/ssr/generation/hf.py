"""In-process generation with a Hugging Face model: the one batched generate loop and its text wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.generation.config import DecodingConfig
from ssr.runtime.precision import autocast_dtype as precision_dtype

if TYPE_CHECKING:
    pass


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
    see :mod:`ssr.runtime.precision`); ``None`` runs the weights as stored. ``on_batch(indices, texts)`` is
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
