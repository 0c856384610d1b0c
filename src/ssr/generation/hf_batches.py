"""Engine ``hf``: transformers' ``model.generate`` over length-sorted, left-padded batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The batches of engine ``hf``: indices sorted by length, longest first (ties in input order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def hf_batched_ids(
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
    """transformers' ``generate`` over length-sorted (longest first), left-padded batches (engine ``hf``).

    Returns the new token ids of every prompt in input order (padding after an early stop
    included; callers cut at their stop tokens). ``on_batch(indices, new_ids)`` runs after each
    batch. ``sample_seed`` reseeds torch before each batch (``seed + batch start``) so sampled
    outputs do not depend on what ran before. The model is left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = length_sorted_batches([len(p) for p in prompt_ids], batch_size)
    results: list[list[int]] = [[] for _ in prompt_ids]
    bar = tqdm(total=len(prompt_ids), desc="generate", unit="row", disable=not progress)
    try:
        for number, idx in enumerate(batches):
            start = number * batch_size
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
