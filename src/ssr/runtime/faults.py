"""Deterministic crash injection for the fault tests: ``SSR_FAULT_AT=<point>:<n>[,<point>:<n>...]``.

The n-th time the process reaches ``fault_point(<point>)`` it runs the point's ``before_kill``
(e.g. writes half a cache line) and kills itself with SIGKILL: no handler, no flush, no cleanup,
exactly like ``kill -9``. Without the variable (always, outside tests) a point costs one lookup.

Points: ``cache.<dir>`` (a :class:`ssr.runtime.cache.JsonlCache` append under ``<dir>``, i.e.
``cache.generations`` or ``cache.verdicts``; the kill leaves a torn last line); ``train.step``
(after a training batch, before its checkpoint is written: :class:`ssr.training.callbacks.ResumeState`).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

ENV = "SSR_FAULT_AT"
_passes: Counter[str] = Counter()


def _targets() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, sep, n = part.rpartition(":")
        if not sep or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with n >= 1, got {part!r}")
        out[point] = int(n)
    return out


def fault_point(point: str, before_kill: Callable[[], None] | None = None) -> None:
    """SIGKILL this process the n-th time it passes ``point`` when ``SSR_FAULT_AT`` asks for it."""
    if ENV not in os.environ:
        return
    n = _targets().get(point)
    if n is None:
        return
    _passes[point] += 1
    if _passes[point] == n:
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)
