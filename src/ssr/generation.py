"""Batched generation behind one function, with a resumable cache (hf, vllm and server backends).

``BaseModelGenerator`` is what the pipeline calls: the base model (or a completions server,
``backend: openai``, see :mod:`ssr.server_generation`) behind the shared generation cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.cache import JsonlCache, stage_lock
from ssr.hardware import cuda_available
from ssr.models import (
    ModelSpec,
    cast_for_autocast_inference,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_path,
)
from ssr.precision import autocast_dtype as precision_dtype
from ssr.records import content_hash

if TYPE_CHECKING:
    from ssr.server_generation import ServerGenerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings; part of every generation cache key."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def hf_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        else:  # keep generation_config's sampling defaults from warning under greedy decoding
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


def generation_key(model_fingerprint: str, prompt: str, decoding: DecodingConfig) -> str:
    return content_hash("gen", model_fingerprint, prompt, asdict(decoding))


@torch.inference_mode()
def generate_ids(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    pad_token_id: int,
    gen_kwargs: dict[str, Any],
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    sample_seed: int | None = None,
    progress: bool = False,
) -> list[list[int]]:
    """The one batched ``generate`` loop: longest prompts first, left-padded batches.

    Returns the new token ids of every prompt in input order (padding after an early stop
    included; callers cut at their stop tokens). ``on_batch(indices, new_ids)`` runs after each
    batch. ``sample_seed`` reseeds torch before each batch (``seed + batch start``) so sampled
    outputs do not depend on what ran before. The model is left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    bar = tqdm(total=len(prompt_ids), desc="generate", unit="row", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in idx)
            pads = [width - len(prompt_ids[i]) for i in idx]
            input_ids = torch.tensor(
                [[pad_token_id] * n + prompt_ids[i] for n, i in zip(pads, idx)], device=device
            )
            mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads], device=device)
            if sample_seed is not None:
                torch.manual_seed(sample_seed + start)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model.generate(
                    input_ids=input_ids, attention_mask=mask, pad_token_id=pad_token_id, **gen_kwargs
                )
            new = out[:, width:].tolist()
            for i, ids in zip(idx, new):
                results[i] = ids
            if on_batch:
                on_batch(idx, new)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return results


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered chat prompts. The chat template already wrote the special tokens (a
    BOS among them, for Llama-3 or Mistral), so none are added again: every backend gets these."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def decode_new_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]]) -> list[str]:
    """Generated ids -> stripped texts (special tokens, e.g. the end-of-turn, dropped)."""
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def hf_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    decoding: DecodingConfig,
    batch_size: int = 16,
    precision: str | torch.dtype | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
    cache_implementation: str | None = None,
) -> list[str]:
    """Texts generated for already-rendered prompts, in input order (see :func:`generate_ids`).

    ``precision`` is the autocast setting (``auto``, ``bf16-mixed``, ``32-true``, ``bf16``, ``none``;
    see :mod:`ssr.precision`); ``None`` runs the weights as stored. ``on_batch(indices, texts)`` is
    called after each batch (the cache writes there), so an interruption loses at most one batch.
    ``cache_implementation`` is passed to ``generate`` (``"static"`` preallocates the KV cache
    instead of concatenating it at every step).
    """
    device = next(model.parameters()).device
    kwargs = {**decoding.hf_kwargs(), "eos_token_id": [tokenizer.eos_token_id]}
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation

    new_ids = generate_ids(
        model,
        prompt_token_ids(tokenizer, prompts),
        tokenizer.pad_token_id,
        kwargs,
        batch_size,
        autocast_dtype=precision_dtype(precision, device.type),
        on_batch=(lambda idx, ids: on_batch(idx, decode_new_tokens(tokenizer, ids))) if on_batch else None,
        sample_seed=decoding.seed if decoding.do_sample else None,
        progress=progress,
    )
    return decode_new_tokens(tokenizer, new_ids)


def load_vllm(model_path: str, **engine_kwargs: Any) -> Any:
    """A ``vllm.LLM`` engine (GPU; optional extra ``ssr[vllm]``); build it once per generator."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ImportError("generator=vllm needs vLLM: pip install 'ssr[vllm]' (GPU only)") from err
    return LLM(model=model_path, **engine_kwargs)


def vllm_generate(
    llm: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    decoding: DecodingConfig,
    batch_size: int = 256,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
) -> list[str]:
    """vLLM backend: the same prompt token ids and decoding of the new ids as :func:`hf_generate`.

    Prompts go in as token ids (``TokensPrompt``): given text, vLLM would tokenize it with special
    tokens again (a second BOS on Llama-3 / Mistral). Chunks of ``batch_size`` prompts (vLLM
    batches inside a chunk); ``on_batch(indices, texts)`` runs after each, so the cache is
    written as generation goes. Generation stops at the tokenizer's EOS, as the hf path does.
    """
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=decoding.max_new_tokens,
        seed=decoding.seed,
        temperature=decoding.temperature if decoding.do_sample else 0.0,
        top_p=decoding.top_p if decoding.do_sample else 1.0,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    ids = prompt_token_ids(tokenizer, prompts)
    texts: list[str] = []
    for start in range(0, len(ids), batch_size):
        chunk = [{"prompt_token_ids": p} for p in ids[start : start + batch_size]]
        outputs = llm.generate(chunk, params, use_tqdm=progress)
        new = decode_new_tokens(tokenizer, [list(o.outputs[0].token_ids) for o in outputs])
        texts.extend(new)
        if on_batch:
            on_batch(list(range(start, start + len(chunk))), new)
    return texts


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


BACKENDS = ("hf", "vllm", "openai")


@dataclass
class GeneratorConfig:
    """How the base model writes its own answers and rewrites (``openai``: see ssr.server_generation)."""

    backend: str = "hf"  # hf | vllm | openai
    batch_size: int = 32
    # hf: autocast setting (ssr.precision): auto = measured on this machine; or bf16-mixed, 32-true...
    precision: str = "auto"
    # hf: KV cache passed to generate; "static" preallocates it (no per-step concatenation), null: dynamic
    cache_implementation: str | None = "static"
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    # documents are cut so a prompt has at most this many tokens; null: SSRDataModule sets
    # data.max_length - decoding.max_new_tokens (what training can hold)
    max_prompt_tokens: int | None = None
    # openai: OpenAI-compatible completions servers (conf/generator/openai.yaml documents each key)
    server: str = "llama_cpp"  # llama_cpp (started here over `gguf`) | external (at base_urls)
    base_urls: list[str] = field(default_factory=list)
    served_model: str | None = None
    gguf: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = 4
    timeout_s: float = 300.0
    max_retries: int = 3
    backoff_s: float = 1.0
    prompt_format: str = "text"  # text | token_ids
    extra_body: dict[str, Any] = field(default_factory=dict)
    llama_cpp: dict[str, Any] = field(default_factory=dict)
    # rows also generated with generator=hf to report what the server changes (0: off; not for hf)
    fidelity_sample: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown generator backend {self.backend!r}; valid choices: {', '.join(BACKENDS)}"
            )
        if self.backend == "openai":
            from ssr.server_generation import check_server_options

            check_server_options(self)


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
            from ssr.server_generation import ServerGenerator

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
