"""Work shared by the processes of a run (the selection's generation and judging, the drift
evaluation): a deterministic split, gathers, one decision for all, and a failing rank's error
handed to every rank so that none waits forever.

The drift evaluation runs on every rank of a multi-process run inside :func:`sharding`; its work
(row batches, generation batches, lm-eval documents) goes through :meth:`Shard.map`, which hands
each rank its share and gathers the results back, in input order, on every rank. Outside
:func:`sharding` the active shard is the single process and every method here is the identity.

Two modes (``split``):

- split (DDP and ZeRO-1/2: every rank holds the whole model): rank ``r`` of ``W`` takes batches
  ``r, r + W, ...`` of the order the engines batch in (longest first, ``batch_size`` rows), so each
  batch is one that a single process would run: the same numbers, not only the same items;
- lockstep (ZeRO-3: the parameters are partitioned and every forward gathers them layer by layer,
  a collective all ranks must join): every rank runs all the work in the same order, so the ranks'
  forwards match one for one by construction (lm-eval's own data-parallel split pads requests, not
  forwards, and the evaluation's forwards per batch depend on the data).

Cache reads that decide whether a model runs at all (:meth:`Shard.main_decides`) are made on rank 0
and broadcast, so no rank skips a forward that another runs; files are written by rank 0 alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
# a share of generation may take hours, longer than the training group's timeout (as Lightning's
# _InfiniteBarrier): the selection's collectives go over a private gloo group with this timeout
WAIT_FOREVER = timedelta(days=10000)


class ShardError(RuntimeError):
    """Another rank failed in a step this rank took part in."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Processes of the running ``torch.distributed`` job (1 when none is initialised)."""
    return torch.distributed.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the running ``torch.distributed`` job (0 when none is initialised)."""
    return torch.distributed.get_rank() if _initialized() else 0


@dataclass
class Shard:
    """This process's place in the evaluation: ``rank`` of ``world_size``; ``split`` (see module doc).

    ``counts``: per work source (``self_drift``, ``kl_task``, ``ifeval``, ``tasks.<set>``,
    ``lm_eval``), the items each rank computed in the last :meth:`map` of that source.
    """

    rank: int = 0
    world_size: int = 1
    split: bool = True
    counts: dict[str, list[int]] = field(default_factory=dict)
    group: Any = None  # the process group of the collectives (None: the default group)

    @classmethod
    def of_process_group(cls, split: bool = True) -> Shard:
        """The default ``torch.distributed`` group's rank and size (one process when none is set up)."""
        return cls(rank(), world_size(), split)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parts(self) -> int:
        """Into how many shares work is split (1 in lockstep)."""
        return self.world_size if self.split else 1

    @property
    def mode(self) -> str:
        return "split" if self.split else "lockstep"

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items ``rank, rank + parts, ...`` (all of them in lockstep)."""
        return list(items[self.rank :: self.parts]) if self.parts > 1 else list(items)

    def all_gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def main_decides(self, decide: Callable[[], T]) -> T:
        """``decide()`` run on rank 0 only (a cache read, a plan, a file write), its answer on
        every rank; rank 0's failure is raised on every rank (:class:`ShardError` on the others)."""
        if not self.distributed:
            return decide()
        sent, err = _outcome(decide) if self.is_main else (None, None)
        return self._results([self.broadcast(sent)], err)[0]

    def all_do(self, step: Callable[[], T]) -> list[T]:
        """``step()`` on every rank; every rank gets the results in rank order, or the first
        failure (a rank's own error as raised, :class:`ShardError` for another rank's)."""
        sent, err = _outcome(step)
        return self._results(self.all_gather(sent), err)

    def _results(self, outcomes: list[tuple[bool, Any]], own_error: Exception | None) -> list[Any]:
        if own_error is not None:
            raise own_error
        for rank, (ok, value) in enumerate(outcomes):
            if not ok:
                raise ShardError(f"rank {rank} of {self.world_size} failed: {value}")
        return [value for _, value in outcomes]

    def add_counts(self, source: str, per_rank: Sequence[int]) -> None:
        previous = self.counts.get(source, [0] * len(per_rank))
        self.counts[source] = [a + b for a, b in zip(previous, per_rank, strict=True)]

    def map(
        self,
        items: Sequence[T],
        run: Callable[[list[T]], list[R]],
        *,
        source: str,
        batch_size: int = 1,
        length: Callable[[T], int] | None = None,
    ) -> list[R]:
        """``run`` over this rank's share of ``items``; every rank gets all results, in input order.

        Shares are whole batches: ``items`` ordered longest first by ``length`` (a stable sort, as
        the engines and :func:`ssr.eval.token_nll.row_scores` order them), cut into ``batch_size``
        rows, dealt round-robin; ``run`` gets its batches in that order, so its own length sort and
        batching rebuild exactly those batches (one process's numbers). Where that would leave a rank
        without a batch, the batches are cut smaller (``ceil(len(items) / world_size)`` rows), so
        every rank has work; their numbers then equal one process's up to floating-point noise.
        """
        if self.parts == 1:
            out = run(list(items))
            self.counts[source] = [len(items)]
            return out
        order = sorted(range(len(items)), key=lambda i: -length(items[i])) if length else range(len(items))
        order = list(order)
        size = max(1, min(batch_size, -(-len(order) // self.parts)))
        batches = [order[k : k + size] for k in range(0, len(order), size)]
        mine = [i for batch in self.take(batches) for i in batch]
        results = run([items[i] for i in mine])
        if len(results) != len(mine):
            raise RuntimeError(f"{source}: {len(results)} results for {len(mine)} items on rank {self.rank}")
        parts = self.all_gather(list(zip(mine, results, strict=True)))
        self.counts[source] = [len(part) for part in parts]
        merged: list[Any] = [None] * len(items)
        for part in parts:
            for i, result in part:
                merged[i] = result
        return merged

    def record(self) -> dict[str, Any]:
        """What a record keeps of the split: mode, world size and the per-rank item counts."""
        return {"world_size": self.world_size, "mode": self.mode, "items": dict(self.counts)}


def _outcome(step: Callable[[], T]) -> tuple[tuple[bool, Any], Exception | None]:
    """What a rank sends, ``(True, result)`` or ``(False, the error's text)``, and its own error."""
    try:
        return (True, step()), None
    except Exception as err:  # every rank must hear of it; it is raised again
        return (False, f"{type(err).__name__}: {err}"), err


@contextlib.contextmanager
def rank_shard() -> Iterator[Shard | None]:
    """This process's :class:`Shard` over a private long-timeout gloo group (``None`` in a
    one-process run). Every rank must enter it at the same point (creating a group is collective)."""
    if world_size() == 1:
        yield None
        return
    dist = torch.distributed
    group = dist.new_group(backend="gloo", timeout=WAIT_FOREVER)
    try:
        yield Shard(rank=rank(), world_size=world_size(), group=group)
    finally:
        dist.destroy_process_group(group)


_ACTIVE: ContextVar[Shard | None] = ContextVar("ssr_eval_shard", default=None)


def active_shard() -> Shard:
    """The shard of the evaluation running now (a single process outside :func:`sharding`)."""
    return _ACTIVE.get() or Shard()


@contextlib.contextmanager
def sharding(shard: Shard) -> Iterator[Shard]:
    """Run the evaluation inside as ``shard`` (every rank must enter it, and run the same calls)."""
    token = _ACTIVE.set(shard)
    try:
        yield shard
    finally:
        _ACTIVE.reset(token)


# --- DeepSpeed ZeRO-3 ---------------------------------------------------------------------------


def zero3_partitioned(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned ``module``'s parameters (each rank holds a slice; a
    forward gathers them through hooks, and the tensors read directly are empty)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


@contextlib.contextmanager
def gathered(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """ZeRO-3 parameters gathered whole for reading (a collective: every rank must enter);
    a no-op for ordinary parameters."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


def synced_generation(module: torch.nn.Module) -> bool:
    """``generate(synced_gpus=True)`` is needed: ZeRO-3 across processes, where a rank that has
    finished must keep stepping (and joining the gathers) until every rank has."""
    return world_size() > 1 and zero3_partitioned(module)
