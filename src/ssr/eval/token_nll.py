"""Per-row summed NLL of labelled token sequences (one batched forward pass per batch).

Shared by self-drift (the base model's answers to general instructions) and ``kl_task`` (its
answers to the training prompts): each row is ``(input_ids, labels)`` with ``-100`` on the
positions that are not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ssr.data.records import chunks
from ssr.data.tokenize import IGNORE_INDEX
from ssr.models.logits import response_logits
from ssr.runtime.precision import autocast_to

Row = tuple[list[int], list[int]]


@torch.no_grad()
def row_nll(
    model: Any, rows: Sequence[Row], pad_id: int, batch_size: int = 16, dtype: torch.dtype | None = None
) -> list[tuple[float, int]]:
    """``(summed NLL, scored tokens)`` of every row, in input order (longest rows batched first)."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    for batch in chunks(order, batch_size):
        width = max(len(rows[i][0]) for i in batch)
        ids = torch.tensor([rows[i][0] + [pad_id] * (width - len(rows[i][0])) for i in batch], device=device)
        labels = torch.tensor(
            [rows[i][1] + [IGNORE_INDEX] * (width - len(rows[i][1])) for i in batch], device=device
        )
        lengths = torch.tensor([len(rows[i][0]) for i in batch], device=device)
        mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
        with autocast_to(
            device.type, dtype
        ):  # only scored positions reach the output layer and the float cast
            logits, targets, keep = response_logits(model, ids, mask, labels)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        row_of = keep.nonzero()[:, 0]
        sums = (
            torch.zeros(len(batch), dtype=torch.float64, device=device)
            .index_add_(0, row_of, nll.double())
            .tolist()
        )
        counts = keep.sum(dim=1).tolist()
        for i, total, count in zip(batch, sums, counts):
            out[i] = (float(total), int(count))
    return out
