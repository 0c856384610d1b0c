"""``kl_task``: forward KL(pi0 || pi) on the training prompts (RL's Razor, 2509.04259).

Forgetting tracks how far the fine-tuned policy moved from the base policy *on the new task's
data*. Estimated from samples of pi0 — the base model's own greedy answers to the training
prompts, the rows the generation stage already cached — as the mean over rows of the per-token
``log pi0(y|x) - log pi(y|x)`` on the answer tokens (tokenized exactly as training would tokenize
that answer as a target). The base log-probs are computed once and cached under
``SSR_CACHE/kl_task`` (keyed by the base weights, the token rows and the autocast dtype).
Self-drift measures the same quantity on general instructions instead of the task's prompts.
The answers are greedy, not samples of pi0, so the estimate is not bound to be >= 0: a model
whose greedy answers are unlikely under itself (a random one) can be moved to raise them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ssr.eval.self_drift import base_weights, weights_fingerprint
from ssr.eval.token_nll import Row, row_nll
from ssr.runtime.distributed import active_shard
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root
from ssr.runtime.precision import autocast_dtype

KL_TASK_KEY = "kl_task"


@dataclass
class KLTaskConfig:
    """Settings (mirrors ``eval.kl_task`` in ``conf/eval/default.yaml``)."""

    enabled: bool = True
    max_rows: int | None = 16  # the first n training rows (None = all)
    batch_size: int = 8


@dataclass
class KLTaskReference:
    """The scored rows and the base model's summed log-likelihood NLL on each."""

    ids: list[str]
    rows: list[tuple[list[int], list[int]]]
    base_nll: list[float]
    n_tokens: list[int]


def base_reference(
    model: Any,
    ids: Sequence[str],
    rows: Sequence[Row],
    pad_id: int,
    batch_size: int,
    dtype: torch.dtype | None,
) -> KLTaskReference:
    """The base model's (PEFT adapters disabled) NLL on ``rows``, from the cache or computed now."""
    rows = [(list(a), list(b)) for a, b in rows]
    key = content_hash(weights_fingerprint(model), rows, str(dtype))
    path = cache_root() / "kl_task" / f"{key}.json"
    shard = active_shard()
    cached = shard.main_decides(lambda: _cached_base(path, ids))
    if cached is not None:
        return KLTaskReference(list(ids), rows, cached["base_nll"], cached["n_tokens"])
    with base_weights(model):
        per_row = row_nll(model, rows, pad_id, batch_size, dtype, source=KL_TASK_KEY)
    ref = KLTaskReference(list(ids), rows, [t for t, _ in per_row], [c for _, c in per_row])
    if shard.is_main:
        atomic_write_text(path, json.dumps({k: v for k, v in asdict(ref).items() if k != "rows"}))
    return ref


def _cached_base(path: Path, ids: Sequence[str]) -> dict[str, Any] | None:
    """The cached base NLLs of these rows (``None``: absent, unreadable or other rows)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached["ids"] == list(ids):
            return cached
    return None


def kl_task_items(
    model: Any, reference: KLTaskReference, pad_id: int, batch_size: int, dtype: torch.dtype | None
) -> list[dict[str, Any]]:
    """Per row: ``kl`` = per-token mean of log pi0(y|x) - log pi(y|x), with the token count."""
    per_row = row_nll(model, reference.rows, pad_id, batch_size, dtype, source=KL_TASK_KEY)
    return [
        {"id": i, "kl": (nll - base) / max(n, 1), "n_tokens": n}
        for i, (nll, _), base, n in zip(
            reference.ids, per_row, reference.base_nll, reference.n_tokens, strict=True
        )
    ]


class KLTask:
    """Holds the rows (set once, from the training data) and scores a model on them."""

    def __init__(self, cfg: KLTaskConfig, pad_id: int | None = None) -> None:
        self.cfg = cfg
        self.pad_id = pad_id
        self.ids: list[str] = []
        self.rows: list[Row] = []
        self.reference: KLTaskReference | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def set_rows(self, ids: Sequence[str], rows: Sequence[Row], pad_id: int) -> None:
        if not rows:
            raise ValueError("kl_task: no training rows to score")
        self.ids, self.rows, self.pad_id, self.reference = list(ids), list(rows), pad_id, None

    def key(self) -> str:
        """What decides the scores besides the weights (part of the base evaluation's cache key)."""
        return content_hash(self.cfg.max_rows, self.ids, self.rows)

    def scores(
        self, model: Any, mixed_precision: str | torch.dtype | None = None, items: Any = None
    ) -> dict[str, float]:
        """``{"kl", "n_rows"}``: mean over rows of the per-token KL estimate (0 for the base model)."""
        if not self.rows or self.pad_id is None:
            raise ValueError("kl_task: rows not set (set_rows) before scoring")
        dtype = autocast_dtype(mixed_precision)
        if self.reference is None:
            self.reference = base_reference(
                model, self.ids, self.rows, self.pad_id, self.cfg.batch_size, dtype
            )
        rows = kl_task_items(model, self.reference, self.pad_id, self.cfg.batch_size, dtype)
        if items is not None:
            items.write(KL_TASK_KEY, rows)
        return {"kl": sum(r["kl"] for r in rows) / len(rows), "n_rows": float(len(rows))}
