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
from ssr.generation.hf import hf_generate
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
from ssr.runtime.cache import JsonlCache, stage_lock
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

    @property
    def rows_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def cached_generate(
    prompts: list[str],
    cache: JsonlCache,
    model_fingerprint: str,
    decoding: DecodingConfig,
    generate_fn: Callable[..., list[str]],
    backend: str = "hf",
) -> tuple[list[str], GenerationStats]:
    """Generate only the prompts missing from the cache; every new batch is written before the next.

    ``generate_fn(prompts, on_batch)`` runs the backend; it is not called when everything is cached.
    """
    keys = [generation_key(model_fingerprint, p, decoding) for p in prompts]
    rows = [cache.get(k) for k in keys]
    missing = [i for i, r in enumerate(rows) if r is None]
    stats = GenerationStats(rows=len(prompts), cached=len(prompts) - len(missing))
    # duplicate prompts generate once
    todo: dict[str, int] = {}
    for i in missing:
        todo.setdefault(keys[i], i)
    unique = list(todo.values())
    if unique:
        t0 = time.perf_counter()

        def write(batch_idx: list[int], texts: list[str]) -> None:
            cache.put_many(
                (keys[unique[j]], {"text": t, "backend": backend}) for j, t in zip(batch_idx, texts)
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
    texts = []
    for k in keys:
        row = cache.peek(k)
        if row is None:
            raise RuntimeError(f"generation backend returned no text for cache key {k}")
        texts.append(row["text"])
    return texts, stats


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
        if self._model is None:
            self._model, _ = load_model(self.spec)
            self._model.to(self.device)
            if self.autocast is not None:  # weights stored once in the autocast dtype (same outputs)
                cast_for_autocast_inference(self._model, self.autocast)
        return hf_generate(
            self._model,
            self.tokenizer,
            prompts,
            self.cfg.decoding,
            self.cfg.batch_size,
            precision=self.autocast,
            on_batch=on_batch,
            cache_implementation=self.cfg.cache_implementation,
            engine=self.cfg.engine,
        )

    def generate(self, prompts: list[str]) -> tuple[list[str], GenerationStats]:
        with stage_lock(self.cache_path.with_suffix(".lock")):
            cache = JsonlCache(self.cache_path)
            return cached_generate(
                prompts, cache, self.fingerprint, self.cfg.decoding, self._backend, backend=self.cfg.backend
            )

    def release(self) -> None:
        """Free the generation model (stop its servers) before training starts."""
        self._model = None
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> BaseModelGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
