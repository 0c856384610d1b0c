"""Per-row summed NLL of labelled token sequences (one batched forward pass per batch).

Shared by self-drift (the base model's answers to general instructions) and ``kl_task`` (its
answers to the training prompts): each row is ``(input_ids, labels)`` with ``-100`` on the
positions that are not scored. Self-drift also reads where a reply would end (the end-of-turn
probability along the base's own reply, :class:`RowScore`), from the same forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ssr.data.records import chunks
from ssr.data.tokenize import IGNORE_INDEX
from ssr.models.logits import response_logits
from ssr.runtime.distributed import active_shard
from ssr.runtime.precision import autocast_to

Row = tuple[list[int], list[int]]


@dataclass(frozen=True)
class RowScore:
    """One row's summed NLL and scored tokens; with stop ids, where the reply would end.

    ``stop_prob``: mean probability of a stop token (the end of turn) at the scored positions whose
    target is not one (the reply would end early there); ``log_survival``: the log-probability of
    not stopping at any of them (of reaching the row's own end); ``end_prob``: the probability of a
    stop token where the row's target is one (``nan`` without)."""

    nll: float
    n_tokens: int
    stop_prob: float = math.nan
    log_survival: float = math.nan
    end_prob: float = math.nan


@torch.no_grad()
def row_nll(
    model: Any,
    rows: Sequence[Row],
    pad_id: int,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    source: str = "rows",
) -> list[tuple[float, int]]:
    """``(summed NLL, scored tokens)`` of every row, in input order (longest rows batched first)."""
    return [(r.nll, r.n_tokens) for r in row_scores(model, rows, pad_id, batch_size, dtype, source=source)]


@torch.no_grad()
def row_scores(
    model: Any,
    rows: Sequence[Row],
    pad_id: int,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    stop_ids: Collection[int] = (),
    source: str = "rows",
) -> list[RowScore]:
    """:class:`RowScore` of every row, in input order (longest rows batched first); the stop
    measures need ``stop_ids`` and come from the same forward pass. In a sharded evaluation each
    rank scores its share of the batches (:meth:`ssr.runtime.distributed.Shard.map`, counted as
    ``source``)."""
    return active_shard().map(
        rows,
        lambda part: _row_scores(model, part, pad_id, batch_size, dtype, stop_ids),
        source=source,
        batch_size=batch_size,
        length=lambda row: len(row[0]),
    )


def _row_scores(
    model: Any,
    rows: Sequence[Row],
    pad_id: int,
    batch_size: int,
    dtype: torch.dtype | None,
    stop_ids: Collection[int],
) -> list[RowScore]:
    device = next(model.parameters()).device
    out: list[RowScore] = [RowScore(0.0, 0)] * len(rows)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
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
        logits = logits.float()
        row_of = keep.nonzero()[:, 0]

        def per_row(values: torch.Tensor, row_of: torch.Tensor = row_of, n: int = len(batch)) -> list[float]:
            zeros = torch.zeros(n, dtype=torch.float64, device=device)
            return zeros.index_add_(0, row_of, values.double()).tolist()

        sums = per_row(F.cross_entropy(logits, targets, reduction="none"))
        counts = keep.sum(dim=1).tolist()
        stop = _stop_measures(logits, targets, stops, per_row) if len(stops) else None
        for k, (i, total, count) in enumerate(zip(batch, sums, counts)):
            extra = {} if stop is None else {name: values[k] for name, values in stop.items()}
            out[i] = RowScore(float(total), int(count), **extra)
    return out


def _stop_measures(
    logits: torch.Tensor, targets: torch.Tensor, stops: torch.Tensor, per_row: Any
) -> dict[str, list[float]]:
    """Per row of the batch: ``stop_prob``, ``log_survival``, ``end_prob`` (see :class:`RowScore`)."""
    p_stop = logits.log_softmax(-1)[:, stops].logsumexp(-1).exp()
    at_stop = torch.isin(targets, stops).double()
    inside = 1.0 - at_stop
    n_inside, n_end = per_row(inside), per_row(at_stop)
    stop_sum = per_row(p_stop * inside)
    survival = per_row(torch.log1p(-p_stop.clamp(max=1 - 1e-7)) * inside)
    end_sum = per_row(p_stop * at_stop)
    return {
        "stop_prob": [s / n if n else math.nan for s, n in zip(stop_sum, n_inside)],
        "log_survival": survival,
        "end_prob": [s / n if n else math.nan for s, n in zip(end_sum, n_end)],
    }
