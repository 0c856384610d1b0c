"""The judge interface, the verdict type and the cached, resumable driver ``run_judge``."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssr.data.records import chunks
from ssr.runtime.cache import JsonlCache, SharedJsonlCache
from ssr.runtime.distributed import Shard
from ssr.runtime.hashing import content_hash

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """A judge could not produce verdicts (bad config, unreachable server, broken replies)."""


@dataclass(frozen=True)
class JudgeItem:
    """One (question, gold, candidate) triple to judge; ``document`` is the grounding context."""

    id: str
    question: str
    gold: str
    candidate: str
    document: str = ""
    answerable: bool = True


@dataclass(frozen=True)
class Verdict:
    """Whether the candidate is accepted as being as good as the gold answer.

    ``parsed=False`` marks a judge output that is no verdict (unparseable): it is not a rejection
    (``accept`` is False only so that the candidate is not used), it is never cached, it is
    counted apart, and too many of them stop the run (:func:`run_judge`), so that a broken judge
    cannot look like a strict one.
    """

    accept: bool
    score: float
    rationale: str
    parsed: bool = True

    def __post_init__(self) -> None:
        if not self.parsed and self.accept:
            raise ValueError("an unparsed verdict must be a reject")

    def to_row(self) -> dict[str, Any]:
        return {
            "accept": self.accept,
            "score": self.score,
            "rationale": self.rationale,
            "parsed": self.parsed,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Verdict:
        return cls(
            accept=bool(row["accept"]),
            score=float(row["score"]),
            rationale=str(row.get("rationale", "")),
            parsed=bool(row.get("parsed", True)),
        )


class Judge(abc.ABC):
    """Decides per item whether a candidate answer is as good as the gold answer.

    ``max_unparseable``: the largest share of unparseable outputs a run accepts (judges whose
    output is always a verdict keep 0: any unparseable one is a bug).
    """

    name: str = "judge"
    max_unparseable: float = 0.0
    # judges in this process (rules, a local model): each rank of a multi-process run judges its
    # share; a judge behind a server (openai) judges on rank 0 alone (its concurrency is its own)
    shardable: bool = True

    def fingerprint(self) -> str:
        """Identity of everything that changes verdicts (model, prompt, thresholds), for cache keys."""
        return content_hash(type(self).__qualname__, self._fingerprint_parts())

    def _fingerprint_parts(self) -> dict[str, Any]:
        """Verdict-relevant settings; subclasses extend. Never include secrets."""
        return {}

    @abc.abstractmethod
    def judge_batch(self, items: list[JudgeItem]) -> list[Verdict]:
        """Return one verdict per item, in order."""


def judge_key(judge_fingerprint: str, item: JudgeItem) -> str:
    """Cache key of one verdict: the judge's identity and everything it reads of the item."""
    return content_hash(judge_fingerprint, item.question, item.document, item.gold, item.candidate)


def cached_verdicts(keys: list[str], cache: JsonlCache | None) -> tuple[dict[str, Verdict], list[int]]:
    """The cached verdicts of ``keys``, and the first item of each key still to judge."""
    verdicts: dict[str, Verdict] = {}
    todo: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in verdicts or key in todo:
            continue
        row = cache.get(key) if cache is not None else None
        if row is not None and row.get("parsed", True):  # an unparseable row (older caches): ask again
            verdicts[key] = Verdict.from_row(row)
        else:
            todo[key] = i
    return verdicts, list(todo.values())


def run_judge(
    judge: Judge,
    items: list[JudgeItem],
    cache: JsonlCache | None,
    batch_size: int = 16,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> list[Verdict]:
    """Judge ``items`` (in input order), skipping those already in ``cache``.

    New verdicts are appended to the cache after every batch, so an interruption loses at most
    one batch and re-running resumes. Identical items are judged once. ``provenance``: more
    fields for each new cache row (the rank that judged it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fingerprint = judge.fingerprint()
    keys = [judge_key(fingerprint, item) for item in items]
    verdicts, first = cached_verdicts(keys, cache)
    todo = {keys[i]: items[i] for i in first}
    n_cached = len(verdicts)
    where = f" (cache {cache.path})" if cache is not None else ""
    log.info(
        "judge %s: %d items, %d unique, %d cached, %d to judge%s",
        judge.name,
        len(items),
        n_cached + len(todo),
        n_cached,
        len(todo),
        where,
    )

    pending = list(todo.items())
    batches = chunks(pending, batch_size)
    if progress and pending:
        from tqdm.auto import tqdm

        batches = tqdm(
            batches, total=-(-len(pending) // batch_size), desc=f"judge {judge.name}", unit="batch"
        )
    n_new = 0
    unparsed: list[tuple[JudgeItem, Verdict]] = []
    for batch in batches:
        try:
            new = judge.judge_batch([item for _, item in batch])
            if len(new) != len(batch):
                raise JudgeError(f"judge returned {len(new)} verdicts for a batch of {len(batch)}")
        except Exception as err:
            state = f"{n_cached + n_new} of {n_cached + len(todo)} unique items are judged" + (
                f" and saved in {cache.path}; re-running resumes from there"
                if cache is not None
                else " (no cache: re-running starts over)"
            )
            if isinstance(err, JudgeError):
                raise JudgeError(f"judge {judge.name} failed: {err}. {state}") from err
            log.error("judge %s stopped: %s", judge.name, state)
            raise
        if cache is not None:
            cache.put_many(
                (key, {"id": item.id, "judge": judge.name, **verdict.to_row(), **(provenance or {})})
                for (key, item), verdict in zip(batch, new)
                if verdict.parsed
            )
        verdicts.update((key, verdict) for (key, _), verdict in zip(batch, new))
        unparsed += [(item, verdict) for (_, item), verdict in zip(batch, new) if not verdict.parsed]
        n_new += len(batch)
        check_unparseable(judge, unparsed, n_cached + len(todo), cache)

    out = [verdicts[key] for key in keys]
    log.info(
        "judge %s: %d/%d accepted, %d unparseable outputs (not verdicts, not cached)",
        judge.name,
        sum(v.accept for v in out),
        len(out),
        sum(not v.parsed for v in out),
    )
    return out


def run_judge_sharded(
    judge: Judge,
    items: list[JudgeItem],
    cache_path: Path,
    shard: Shard,
    batch_size: int = 16,
) -> tuple[list[Verdict], list[int]]:
    """:func:`run_judge` in a multi-process run: rank 0 lists the items to judge, each rank judges
    whole batches of them (batch ``b`` to rank ``b % world``; a judge that is not
    ``shardable``: rank 0 alone), appending to the cache under its lock; every rank gets every
    verdict (unparseable ones too, which the cache does not keep). Returns the verdicts and the
    items each rank judged."""
    keys = [judge_key(judge.fingerprint(), item) for item in items]
    lock = cache_path.with_suffix(".lock")
    todo = shard.main_decides(lambda: cached_verdicts(keys, SharedJsonlCache(cache_path, lock))[1])
    batches = list(chunks(todo, batch_size))
    if judge.shardable:
        share = [i for batch in shard.take(batches) for i in batch]
    else:
        share = todo if shard.rank == 0 else []

    def judge_share() -> dict[str, dict[str, Any]]:
        if not share:
            return {}
        cache = SharedJsonlCache(cache_path, lock)
        mine = run_judge(judge, [items[i] for i in share], cache, batch_size, provenance={"rank": shard.rank})
        return {keys[i]: v.to_row() for i, v in zip(share, mine)}

    judged = shard.all_do(judge_share)
    verdicts, _ = cached_verdicts(keys, SharedJsonlCache(cache_path, lock))
    verdicts.update((key, Verdict.from_row(row)) for rows in judged for key, row in rows.items())
    out = [verdicts[key] for key in keys]
    item_of = dict(zip(keys, items))
    unparsed = [(item_of[key], v) for key, v in verdicts.items() if not v.parsed]
    check_unparseable(judge, unparsed, len(verdicts), None)
    return out, [len(rows) for rows in judged]


def check_unparseable(
    judge: Judge, unparsed: list[tuple[JudgeItem, Verdict]], n_unique: int, cache: JsonlCache | None
) -> None:
    """Stop once the unparseable outputs pass ``judge.max_unparseable`` of the ``n_unique`` items
    (as soon as the count is past it, not after judging everything)."""
    if len(unparsed) <= judge.max_unparseable * n_unique:
        return
    item, verdict = unparsed[0]
    saved = f"; the parsed verdicts are saved in {cache.path}" if cache is not None else ""
    raise JudgeError(
        f"judge {judge.name}: {len(unparsed)} of {n_unique} outputs are no verdict (unparseable), "
        f"more than judge.max_unparseable={judge.max_unparseable:g} allows; e.g. item {item.id!r}: "
        f"{verdict.rationale}. Unparseable outputs are not rejections and are not cached{saved}: fix "
        "the judge (model, prompt_template, max_tokens) and re-run, or raise judge.max_unparseable"
    )
