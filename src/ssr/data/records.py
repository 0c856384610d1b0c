"""The one record type every dataset adapter produces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """A grounded-QA (or generic chat) training/eval example.

    ``document`` is empty for closed-book or generic prompt/response data; ``messages`` holds a
    chat prefix (without the final assistant turn) for generic chat data and overrides the
    grounded-QA prompt when present.
    """

    id: str
    question: str
    gold: str
    document: str = ""
    answerable: bool = True
    messages: tuple[dict[str, str], ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = list(self.messages) if self.messages is not None else None
        return d


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``items`` with at most ``size`` elements each."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
