"""Per-token training losses over response tokens: ``ce`` and ``dft``.

``dft`` (Dynamic Fine-Tuning, Wu et al. 2025, https://huggingface.co/papers/2508.05629) weights
each token's cross-entropy by the model's own (detached) probability of that token, as TRL's
``SFTTrainer(loss_type="dft")`` does: ``-log p * stop_grad(p)``. Tokens the model already finds
unlikely pull less, which keeps the update closer to the model's distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "dft")


def summed_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Summed loss of ``targets`` (N,) under ``logits`` (N, vocab), computed in fp32."""
    if loss == "ce":
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    if loss == "dft":
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return (nll * torch.exp(-nll).detach()).sum()
    raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
