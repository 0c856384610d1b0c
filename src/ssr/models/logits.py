"""Model outputs shared by training and evaluation: response-position logits and the pad token."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from ssr.data.tokenize import IGNORE_INDEX


def response_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the positions that predict a response token, their targets, and the ``[B, T-1]``
    mask of those positions. Runs the decoder, then projects to the vocabulary only those hidden
    states: prompt positions never reach the (large) output layer."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return head(hidden[:, :-1][mask]), targets[mask], mask


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its eos token (padding is masked either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return pad
