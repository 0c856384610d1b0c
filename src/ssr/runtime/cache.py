"""Append-only, crash-safe JSONL cache shared by generation and judging.

Each line is one JSON object ``{"key": <str>, ...value}``. Writes append a full line, flush and
fsync, so a ``kill -9`` can at worst leave a torn *last* line; that line is detected on open,
reported and cut off (never parsed as data). A corrupt line anywhere else is a hard error naming
the file and line number, because silently dropping finished work would hide a real problem.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ssr.runtime.faults import fault_point

log = logging.getLogger(__name__)


class CacheCorruptError(RuntimeError):
    """A cache file has a corrupt line that is not the torn tail of an interrupted write."""


class JsonlCache:
    """Keyed JSONL store; the first value written for a key wins (re-puts are ignored)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        self.torn_lines_dropped = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        complete, _, tail = raw.rpartition(b"\n")
        # Every write ends with "\n": bytes after the last newline are a torn, interrupted write.
        for lineno, line in enumerate(complete.split(b"\n") if complete else [], start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
                if not isinstance(obj, dict) or "key" not in obj:
                    raise ValueError("not a JSON object with a 'key' field")
            except (UnicodeDecodeError, ValueError) as err:
                raise CacheCorruptError(
                    f"{self.path}: line {lineno} is corrupt ({err}); move the file away to regenerate it"
                ) from err
            self._rows.setdefault(obj["key"], obj)
        if tail:
            self.torn_lines_dropped += 1
            log.warning(
                "%s: dropped a torn last line (%d bytes) left by an interrupted write", self.path, len(tail)
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(len(raw) - len(tail))
                fh.flush()
                os.fsync(fh.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows.values())

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored row (with its ``key``) and count a hit or a miss."""
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
        else:
            self.hits += 1
        return row

    def peek(self, key: str) -> dict[str, Any] | None:
        """Return the stored row without counting a hit or miss."""
        return self._rows.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Append rows durably (one write + fsync for the whole batch)."""
        new = []
        for key, value in items:
            if key in self._rows:
                continue
            row = {"key": key, **value}
            self._rows[key] = row
            new.append(json.dumps(row, ensure_ascii=False) + "\n")
        if not new:
            return
        payload = "".join(new).encode("utf-8")
        try:
            with open(self.path, "ab") as fh:

                def torn_write() -> None:  # a kill in the middle of this write: half of its last line
                    last = payload.rfind(b"\n", 0, len(payload) - 1) + 1
                    fh.write(payload[: last + max(1, (len(payload) - last) // 2)])
                    fh.flush()

                fault_point(f"cache.{self.path.parent.name}", before_kill=torn_write)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:  # disk full, quota: name the file (the OS error does not)
            for line in new:
                self._rows.pop(json.loads(line)["key"], None)
            raise OSError(
                err.errno,
                f"{err.strerror}: appending {len(new)} rows to {self.path} failed; the rows written "
                "before are kept (a torn last line is dropped on the next open): free space and re-run",
            ) from err

    def stats(self) -> dict[str, int]:
        return {
            "rows": len(self),
            "hits": self.hits,
            "misses": self.misses,
            "torn_lines_dropped": self.torn_lines_dropped,
        }


@contextmanager
def stage_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive inter-process lock (``flock``) around a cached stage.

    Parallel sweep jobs that need the same generations wait here, then find the rows cached
    instead of generating them twice.
    """
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class SharedJsonlCache(JsonlCache):
    """A :class:`JsonlCache` that other processes append to at the same time (the ranks of a run).

    It is read and every batch is appended under ``lock`` (the stage's :func:`stage_lock` file),
    so no process reads a half-written line as a torn one, and no two appends interleave.
    """

    def __init__(self, path: str | os.PathLike[str], lock: str | os.PathLike[str]) -> None:
        self.lock = Path(lock)
        with stage_lock(self.lock):
            super().__init__(path)

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        rows = list(items)
        with stage_lock(self.lock):
            super().put_many(rows)
