"""The ranks of a multi-process run as one object: who does which share, and the collective steps.

A :class:`Shard` is this process's place among ``world`` processes (``torch.distributed``): it
takes its share of a list of work units, runs a step on rank 0 alone or on every rank, and hands
the results (or the first failure) to every rank, so that a rank that fails never leaves the
others waiting. The collectives go over a private gloo group with a very long timeout (as
Lightning's ``_InfiniteBarrier``): a share of generation may take hours, longer than the training
group's timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
WAIT_FOREVER = timedelta(days=10000)


class ShardError(RuntimeError):
    """Another rank failed in a step this rank took part in."""


def world_size() -> int:
    """Processes of the running ``torch.distributed`` job (1 when none is initialised)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class Shard:
    """This process's rank among ``world`` processes; ``group`` carries the collectives."""

    rank: int
    world: int
    group: Any = None

    def take(self, units: Sequence[T]) -> list[T]:
        """This rank's share of ``units``: unit ``i`` goes to rank ``i % world`` (the same split on every rank)."""
        return list(units[self.rank :: self.world])

    def from_rank0(self, step: Callable[[], T]) -> T:
        """Run ``step`` on rank 0 alone and return its result on every rank (rank 0's failure too)."""
        import torch.distributed as dist

        sent, err = _outcome(step) if self.rank == 0 else (None, None)
        box = [sent]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return self._results(box, err)[0]

    def all_do(self, step: Callable[[], T]) -> list[T]:
        """Run ``step`` on every rank; every rank gets the results by rank (or a rank's failure)."""
        import torch.distributed as dist

        sent, err = _outcome(step)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, sent, group=self.group)
        return self._results(gathered, err)

    def _results(self, outcomes: list[tuple[bool, Any]], own_error: Exception | None) -> list[Any]:
        if own_error is not None:
            raise own_error  # this rank's own failure, as it was raised
        for rank, (ok, value) in enumerate(outcomes):
            if not ok:
                raise ShardError(f"rank {rank} of {self.world} failed: {value}")
        return [value for _, value in outcomes]


def _outcome(step: Callable[[], T]) -> tuple[tuple[bool, Any], Exception | None]:
    """What a rank sends, ``(True, result)`` or ``(False, the error's text)``, and its own error."""
    try:
        return (True, step()), None
    except Exception as err:  # every rank must hear of it; it is raised again
        return (False, f"{type(err).__name__}: {err}"), err


@contextmanager
def rank_shard() -> Iterator[Shard | None]:
    """This process's :class:`Shard` in a multi-process run (``None`` in a one-process run).

    Every rank must enter it at the same point (it creates a process group, a collective step).
    """
    import torch.distributed as dist

    if world_size() == 1:
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=WAIT_FOREVER)
    try:
        yield Shard(rank=dist.get_rank(), world=dist.get_world_size(), group=group)
    finally:
        dist.destroy_process_group(group)
