"""Batched generation behind one function, with a resumable cache (hf, vllm and server backends).

``BaseModelGenerator`` is what the pipeline calls: the base model (or a completions server,
``backend: openai``, see :mod:`ssr.generation.server`) behind the shared generation cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ssr.generation.config import DecodingConfig, GeneratorConfig
from ssr.generation.engine import resolve_engine
from ssr.generation.hf import hf_generate, prompt_token_ids
from ssr.generation.hf_batches import length_sorted_batches
from ssr.generation.server import ServerGenerator
from ssr.generation.vllm import load_vllm, vllm_generate
from ssr.models.loading import (
    ModelSpec,
    cast_for_autocast_inference,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_path,
)
from ssr.runtime.cache import JsonlCache, SharedJsonlCache, stage_lock
from ssr.runtime.distributed import Shard
from ssr.runtime.hardware import cuda_available
from ssr.runtime.hashing import content_hash
from ssr.runtime.precision import autocast_dtype as precision_dtype

log = logging.getLogger(__name__)


def generation_key(model_fingerprint: str, prompt: str, decoding: DecodingConfig) -> str:
    return content_hash("gen", model_fingerprint, prompt, asdict(decoding))


@dataclass
class GenerationStats:
    rows: int = 0
    cached: int = 0
    generated: int = 0
    seconds: float = 0.0
    by_rank: list[int] | None = None  # rows each rank generated (a multi-process run)

    @property
    def rows_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def missing_rows(cache: JsonlCache, keys: list[str]) -> tuple[list[int], list[int]]:
    """The rows whose key is not cached, and the first of them for each key (duplicate prompts
    generate once)."""
    missing = [i for i, k in enumerate(keys) if cache.get(k) is None]
    first: dict[str, int] = {}
    for i in missing:
        first.setdefault(keys[i], i)
    return missing, list(first.values())


def cached_generate(
    prompts: list[str],
    cache: JsonlCache,
    model_fingerprint: str,
    decoding: DecodingConfig,
    generate_fn: Callable[..., list[str]],
    backend: str = "hf",
    provenance: dict[str, Any] | None = None,
) -> tuple[list[str], GenerationStats]:
    """Generate only the prompts missing from the cache; every new batch is written before the next.

    ``generate_fn(prompts, on_batch)`` runs the backend; it is not called when everything is cached.
    ``provenance``: more fields for each new cache row (the rank that generated it).
    """
    keys = [generation_key(model_fingerprint, p, decoding) for p in prompts]
    missing, unique = missing_rows(cache, keys)
    stats = GenerationStats(rows=len(prompts), cached=len(prompts) - len(missing))
    if unique:
        t0 = time.perf_counter()

        def write(batch_idx: list[int], texts: list[str]) -> None:
            cache.put_many(
                (keys[unique[j]], {"text": t, "backend": backend, **(provenance or {})})
                for j, t in zip(batch_idx, texts)
            )

        generate_fn([prompts[i] for i in unique], write)
        stats.generated = len(unique)
        stats.seconds = time.perf_counter() - t0
        log.info(
            "generated %d rows in %.1fs (%.2f rows/s); %d from cache",
            len(unique),
            stats.seconds,
            stats.rows_per_s,
            stats.cached,
        )
    return cached_texts(cache, keys), stats


def cached_texts(cache: JsonlCache, keys: list[str]) -> list[str]:
    """The cached text of every key (all must be there)."""
    texts = []
    for k in keys:
        row = cache.peek(k)
        if row is None:
            raise RuntimeError(f"generation backend returned no text for cache key {k}")
        texts.append(row["text"])
    return texts


class BaseModelGenerator:
    """Generates with the *base* model (loaded lazily, once) through the shared generation cache.

    ``backend: openai`` generates through completions servers instead (started lazily, only when
    rows are missing, and stopped by :meth:`release`); use it as a context manager.
    """

    def __init__(self, spec: ModelSpec, cfg: GeneratorConfig, cache_dir: Path) -> None:
        self.spec, self.cfg, self.cache_dir = spec, cfg, Path(cache_dir)
        self.device = "cuda" if cuda_available() else "cpu"
        self.autocast = precision_dtype(cfg.precision, self.device) if cfg.backend == "hf" else None
        self._model = None
        self._engine: str | None = None  # the engine rank 0 chose, in a multi-process run
        self.tokenizer = load_tokenizer(spec)
        self.server: ServerGenerator | None = None
        if cfg.backend == "openai":
            self.server = ServerGenerator(cfg, self.tokenizer, log_dir=self.cache_dir / "servers")

    @cached_property
    def fingerprint(self) -> str:
        """The cache identity: the served model for backend=openai, else the weights (and, for hf,
        the autocast dtype: it changes greedy answers)."""
        if self.server:
            return self.server.fingerprint
        weights = model_fingerprint(self.spec)
        return weights if self.autocast is None else content_hash(weights, "autocast", str(self.autocast))

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / "generations" / f"{self.fingerprint}.jsonl"

    def _backend(self, prompts: list[str], on_batch: Any) -> list[str]:
        if self.server is not None:
            return self.server.generate(prompts, on_batch)
        if self.cfg.backend == "vllm":
            if self._model is None:
                self._model = load_vllm(resolve_path(self.spec.name_or_path), **self.cfg.vllm_kwargs)
            return vllm_generate(
                self._model, self.tokenizer, prompts, self.cfg.decoding, self.cfg.batch_size, on_batch
            )
        return hf_generate(
            self._hf_model(),
            self.tokenizer,
            prompts,
            self.cfg.decoding,
            self.cfg.batch_size,
            precision=self.autocast,
            on_batch=on_batch,
            cache_implementation=self.cfg.cache_implementation,
            engine=self._engine or self.cfg.engine,
        )

    def _hf_model(self) -> Any:
        if self._model is None:
            self._model, _ = load_model(self.spec)
            self._model.to(self.device)
            if self.autocast is not None:  # weights stored once in the autocast dtype (same outputs)
                cast_for_autocast_inference(self._model, self.autocast)
        return self._model

    def _engine_choice(self) -> str:
        """The in-process engine ``engine`` resolves to here (``auto``: measured)."""
        return resolve_engine(
            self.cfg.engine, self._hf_model(), self.autocast, self.tokenizer.pad_token_id
        ).engine

    def generate(self, prompts: list[str], shard: Shard | None = None) -> tuple[list[str], GenerationStats]:
        """Texts for ``prompts`` through the cache; with a ``shard`` (a multi-process run) every rank
        generates its share of the missing rows (:meth:`_generate_sharded`)."""
        if shard is not None:
            return self._generate_sharded(prompts, shard)
        with stage_lock(self.cache_path.with_suffix(".lock")):
            cache = JsonlCache(self.cache_path)
            return cached_generate(
                prompts, cache, self.fingerprint, self.cfg.decoding, self._backend, backend=self.cfg.backend
            )

    def _generate_sharded(self, prompts: list[str], shard: Shard) -> tuple[list[str], GenerationStats]:
        """Rank 0 lists the rows missing from the cache; every rank generates its share of them
        (:meth:`_share`), appending to the cache under its lock; then every rank reads them all."""
        t0 = time.perf_counter()
        fingerprints = shard.all_do(lambda: self.fingerprint)
        if len(set(fingerprints)) > 1:  # e.g. precision `auto` measured apart on each rank
            raise ValueError(
                f"the ranks generate with different weights or autocast dtypes (cache keys by rank: "
                f"{fingerprints}); set trainer.precision explicitly (e.g. bf16-mixed or 32-true)"
            )
        keys = [generation_key(self.fingerprint, p, self.cfg.decoding) for p in prompts]
        lock = self.cache_path.with_suffix(".lock")

        def plan() -> tuple[int, list[int]]:  # rows missing, and the first row of each missing key
            missing, unique = missing_rows(SharedJsonlCache(self.cache_path, lock), keys)
            return len(missing), unique

        n_missing, todo = shard.main_decides(plan)
        if todo and self.cfg.backend == "hf" and self._engine is None:  # `auto` measured once, not per rank
            self._engine = shard.main_decides(self._engine_choice)
        share = self._share(prompts, todo, shard)

        def generate_share() -> int:
            if not share:
                return 0
            _, stats = cached_generate(
                [prompts[i] for i in share],
                SharedJsonlCache(self.cache_path, lock),
                self.fingerprint,
                self.cfg.decoding,
                self._backend,
                backend=self.cfg.backend,
                provenance={"rank": shard.rank},
            )
            return stats.generated

        by_rank = shard.all_do(generate_share)
        log.info(
            "rank %d of %d generated %d of the %d missing rows",
            shard.rank,
            shard.world_size,
            by_rank[shard.rank],
            len(todo),
        )
        texts = cached_texts(SharedJsonlCache(self.cache_path, lock), keys)
        stats = GenerationStats(
            len(prompts), len(prompts) - n_missing, sum(by_rank), time.perf_counter() - t0, by_rank
        )
        return texts, stats

    def _share(self, prompts: list[str], todo: list[int], shard: Shard) -> list[int]:
        """This rank's rows of ``todo``: whole batches of engine hf's length-sorted order, batch
        ``b`` to rank ``b % world``, so that each batch holds the rows it holds in one process
        (greedy texts are then the same). ``vllm`` and ``openai`` (servers, or an engine that takes
        GPUs of its own) generate on rank 0 alone."""
        if self.cfg.backend != "hf":
            return todo if shard.rank == 0 else []
        lengths = [len(ids) for ids in prompt_token_ids(self.tokenizer, [prompts[i] for i in todo])]
        batches = length_sorted_batches(lengths, self.cfg.batch_size)
        return [todo[j] for batch in shard.take(batches) for j in batch]

    def release(self) -> None:
        """Free the generation model (stop its servers) before training starts."""
        self._model = None
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> BaseModelGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
