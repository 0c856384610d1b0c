"""The in-process generation engines behind one call, and ``engine: auto`` chosen by measurement.

Engines (all run the model as it is, PEFT adapters included, in the precision asked for; none
quantizes):

- ``hf``: transformers' ``model.generate`` over length-sorted, left-padded batches (every row of
  a batch runs until its longest ends);
- ``continuous``: :mod:`ssr.generation.continuous`, continuous batching over a preallocated
  slotted KV cache (a finished row's slot is refilled at once; Llama-family models).

``auto`` times both on a short synthetic workload with the model at hand (a few seconds, once per
machine: cached under ``$SSR_CACHE/generation_engine``, keyed by the CPU/GPU, its ISA and ISA caps,
torch, threads, the compute dtype and the architecture's shape) and picks the faster (a near tie
goes to continuous, whose scheduling gains the probe cannot show: :func:`choose`); a model the
continuous engine cannot run gets ``hf`` without a probe. Every resolved choice is logged and kept
for the run's ``summary.json`` (:func:`resolved_choices`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ssr.generation.config import ENGINE_CHOICES, ENGINES
from ssr.generation.continuous import (
    Sampling,
    causal_lm,
    continuous_generate_ids,
    unsupported_reason,
)
from ssr.generation.hf_batches import hf_batched_ids
from ssr.runtime.distributed import synced_generation
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hardware import cpu_isa, device_name, isa_env
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root

log = logging.getLogger(__name__)

AUTO = ENGINE_CHOICES[0]
CACHE_VERSION = 2  # 2: the choice rule gained HF_MARGIN
# the probe: prompts of these lengths (token ids drawn from a fixed generator), this many new tokens
PROBE_PROMPT_LENGTHS = (32, 28, 24, 20, 16, 12, 8, 4)
PROBE_NEW_TOKENS = 12
# hf is chosen over continuous only when the probe measures it this much faster (see choose())
HF_MARGIN = 1.1

# engine name -> tokens/s of that engine on the probe (injectable for tests)
Probe = Callable[[str], float]

_RESOLVED: dict[str, dict[str, Any]] = {}


@dataclass
class EngineChoice:
    """What ``engine`` resolved to for a model on this machine, and the timings behind it."""

    setting: str
    engine: str
    reason: str
    dtype: str
    device_name: str
    isa: list[str]
    isa_env: dict[str, str] = field(default_factory=dict)
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        timed = ", ".join(f"{k} {v:.0f} tokens/s" for k, v in self.tokens_per_s.items())
        return f"generation engine {self.setting} -> {self.engine} ({self.dtype}): {self.reason}" + (
            f" [probe: {timed}]" if timed else ""
        )


def resolved_choices() -> list[dict[str, Any]]:
    """The engine choices made in this process (one per model shape and dtype) since the last
    :func:`forget_choices`, for summaries."""
    return list(_RESOLVED.values())


def forget_choices() -> None:
    """Start a run's record of engine choices (a process may run several jobs: sweeps, tests)."""
    _RESOLVED.clear()


def _shape(model: torch.nn.Module) -> dict[str, Any]:
    cfg = causal_lm(model).config
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    )
    return {k: getattr(cfg, k, None) for k in keys}


def probe_prompts(vocab_size: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    top = min(vocab_size, 1000)
    return [torch.randint(3, top, (n,), generator=gen).tolist() for n in PROBE_PROMPT_LENGTHS]


def measure(model: torch.nn.Module, dtype: torch.dtype | None, pad_token_id: int) -> Probe:
    """Tokens/s of an engine on the probe prompts (greedy, no stop token: every row runs to the end)."""
    prompts = probe_prompts(causal_lm(model).config.vocab_size)

    def run(engine: str, rows: list[list[int]], new_tokens: int) -> int:
        # no stop token (hf: -1, never generated): every row runs to the end in both engines
        if engine == "continuous":
            out = continuous_generate_ids(model, rows, Sampling(new_tokens), len(rows), dtype)
        else:
            kwargs = {"max_new_tokens": new_tokens, "do_sample": False, "eos_token_id": [-1]}
            kwargs.update(temperature=None, top_p=None, top_k=None)
            out = hf_batched_ids(model, rows, pad_token_id, kwargs, len(rows), dtype)
        return sum(map(len, out))

    def timed(engine: str) -> float:
        run(engine, prompts[:2], 2)  # warm-up
        t0 = time.perf_counter()
        return run(engine, prompts, PROBE_NEW_TOKENS) / (time.perf_counter() - t0)

    return timed


def choose(tokens_per_s: dict[str, float]) -> tuple[str, str]:
    """The fastest engine on the probe, with the reason; ``hf`` only where it is faster than
    ``continuous`` by more than :data:`HF_MARGIN`. The probe (equal batches, every row to its end)
    measures the cost of a step; it cannot show what continuous batching saves on real work (no
    padded steps after a row ends, its slot refilled at once), so a tie goes to ``continuous``."""
    speeds = dict(tokens_per_s)
    if "hf" in speeds and "continuous" in speeds:
        speeds["hf"] /= HF_MARGIN
    best = max(speeds, key=speeds.__getitem__)
    ratios = [f"{tokens_per_s[best] / max(v, 1e-9):.2f}x {k}" for k, v in tokens_per_s.items() if k != best]
    reason = f"{best} measured {', '.join(ratios) or 'alone'} on the probe"
    if best == "continuous" and tokens_per_s["continuous"] < tokens_per_s.get("hf", 0):
        reason += (
            f" (hf wins only beyond {HF_MARGIN:.2f}x: the probe cannot show continuous batching's gains)"
        )
    return best, reason


def resolve_engine(
    setting: str | None,
    model: torch.nn.Module,
    dtype: torch.dtype | None,
    pad_token_id: int = 0,
    *,
    probe: Probe | None = None,
    use_cache: bool = True,
) -> EngineChoice:
    """Resolve an ``engine`` setting for ``model`` run in ``dtype`` (``None``: its own)."""
    setting = AUTO if setting is None else str(setting)
    if setting not in ENGINE_CHOICES:
        raise ValueError(f"generation engine must be one of {', '.join(ENGINE_CHOICES)}; got {setting!r}")
    device = next(model.parameters()).device
    compute = dtype or next(model.parameters()).dtype
    base = dict(
        setting=setting,
        dtype=str(compute).removeprefix("torch."),
        device_name=device_name(device.type),
        isa=cpu_isa() if device.type == "cpu" else [],
        isa_env=isa_env(),
    )
    reason = unsupported_reason(model)
    if setting == "continuous" and reason:
        raise ValueError(f"generation engine 'continuous' cannot run this model: {reason}")
    if setting != AUTO:
        choice = EngineChoice(engine=setting, reason="set explicitly", **base)
    elif reason:
        choice = EngineChoice(engine="hf", reason=f"continuous engine unsupported: {reason}", **base)
    else:
        choice = _measured(model, dtype, pad_token_id, base, probe, use_cache)
    key = content_hash(base, _shape(model))
    if key not in _RESOLVED:
        log.info(choice.describe())
    _RESOLVED[key] = choice.to_dict()
    return choice


def _measured(
    model: torch.nn.Module,
    dtype: torch.dtype | None,
    pad_token_id: int,
    base: dict[str, Any],
    probe: Probe | None,
    use_cache: bool,
) -> EngineChoice:

    key = {k: base[k] for k in ("dtype", "device_name", "isa", "isa_env")}
    key.update(
        version=CACHE_VERSION,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        shape=_shape(model),
        probe=[PROBE_PROMPT_LENGTHS, PROBE_NEW_TOKENS],
    )
    path = cache_root() / "generation_engine" / f"{content_hash(key)}.json"
    cacheable = use_cache and probe is None
    if cacheable and path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stored = json.loads(path.read_text(encoding="utf-8"))
            return EngineChoice(**{**stored, "setting": AUTO, "cached": True})
    timer = probe or measure(model, dtype, pad_token_id)
    speeds = {name: round(float(timer(name)), 1) for name in ENGINES}
    engine, reason = choose(speeds)
    choice = EngineChoice(engine=engine, reason=reason, tokens_per_s=speeds, **base)
    if cacheable:
        atomic_write_text(path, json.dumps(choice.to_dict(), indent=1))
    return choice


# KV-cache slots of the continuous engine at least (callers' batch sizes are sized for padded batches)
MIN_SLOTS = 64
# generate() arguments the continuous engine implements (others, e.g. min_new_tokens, need hf)
CONTINUOUS_KWARGS = frozenset(
    {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "eos_token_id", "cache_implementation"}
)


def sampling_of(model: torch.nn.Module, gen_kwargs: dict[str, Any], sample_seed: int | None) -> Sampling:
    """``generate`` keyword arguments as a :class:`Sampling` (an unset ``eos_token_id`` or
    ``top_k`` falls back to the model's generation config, as in ``generate``)."""
    config = getattr(causal_lm(model), "generation_config", None)
    stops = gen_kwargs.get("eos_token_id")
    if stops is None:
        stops = getattr(config, "eos_token_id", None)
    stops = [] if stops is None else [stops] if isinstance(stops, int) else list(stops)
    do_sample = bool(gen_kwargs.get("do_sample", False))
    top_k = gen_kwargs.get("top_k", getattr(config, "top_k", None)) if do_sample else None
    return Sampling(
        max_new_tokens=int(gen_kwargs["max_new_tokens"]),
        stop_ids=frozenset(int(s) for s in stops),
        do_sample=do_sample,
        temperature=float(gen_kwargs.get("temperature") or 1.0),
        top_p=float(gen_kwargs.get("top_p") or 1.0),
        top_k=int(top_k or 0),
        seed=sample_seed or 0,
    )


@torch.inference_mode()
def generate_ids(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    pad_token_id: int,
    gen_kwargs: dict[str, Any],
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    sample_seed: int | None = None,
    progress: bool = False,
    engine: str | None = AUTO,
) -> list[list[int]]:
    """The one generation call of every in-process path: new token ids per prompt, input order.

    ``gen_kwargs`` are ``generate``'s (``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_p``, ``eos_token_id``...); ``autocast_dtype`` the compute precision (``None``: the
    weights as stored); ``batch_size`` rows per batch (hf) or KV-cache slots (continuous: at least
    :data:`MIN_SLOTS`);
    ``on_batch(indices, new_ids)`` runs as rows finish (the caches write there); ``sample_seed``
    makes sampling reproducible. Callers cut at their stop tokens (hf pads after an early stop;
    continuous ends each row at its stop token).
    """
    choice = resolve_engine(engine, model, autocast_dtype, pad_token_id)
    if synced_generation(model):  # ZeRO-3 across processes (engine hf): step until all ranks end
        gen_kwargs = {**gen_kwargs, "synced_gpus": True}
    extra = sorted(set(gen_kwargs) - CONTINUOUS_KWARGS)
    if choice.engine == "continuous" and extra:
        if choice.setting != AUTO:
            raise ValueError(f"generation engine 'continuous' does not implement {', '.join(extra)}")
        log.debug("engine hf for this call: continuous does not implement %s", extra)
    elif choice.engine == "continuous":
        sampling = sampling_of(model, gen_kwargs, sample_seed)
        return continuous_generate_ids(
            model, prompt_ids, sampling, max(batch_size, MIN_SLOTS), autocast_dtype, on_batch, progress
        )
    return hf_batched_ids(
        model,
        prompt_ids,
        pad_token_id,
        gen_kwargs,
        batch_size,
        autocast_dtype,
        on_batch,
        sample_seed,
        progress,
    )
