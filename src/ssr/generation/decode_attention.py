"""The continuous engine's decode-step attention: a kernel built for this CPU, used where it is
measured faster than torch's ``scaled_dot_product_attention``.

Torch's CPU SDPA runs a decode step (one query per slot, a few query heads per key/value head) as
tiny flash-attention blocks far below the memory bandwidth, and over the longest live sequence's
span for every slot. ``decode_attention.cpp`` reads each cached row once for all query heads of its
group and stops at each slot's own position. It is compiled on first use with this machine's
instruction sets (``torch.utils.cpp_extension``: a C++ compiler is needed; about a minute, once,
under ``$SSR_CACHE/kernels``). Where it cannot be built, or disagrees with SDPA on a check, or is
not faster on a probe of the model's attention shape (timed at run time, once per process and
shape), SDPA is used. ``SSR_DECODE_ATTENTION=sdpa|kernel`` forces one (``auto``: the default).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ssr.runtime.hardware import cpu_isa, isa_env
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_attention.cpp")
ENV = "SSR_DECODE_ATTENTION"
CHOICES = ("auto", "kernel", "sdpa")
# the probe: this many slots at this span, with the model's heads, in the compute dtype
PROBE_SLOTS, PROBE_SPAN = 32, 512
# largest |kernel - SDPA| accepted on the probe (outputs are convex combinations of values ~N(0,1))
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}

# (q [n, kv, group, dim], keys [slots, kv, len, dim], values, pos [n]) -> [n, kv, group, dim]
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def setting() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def compile_flags() -> list[str]:
    """Optimisation and instruction-set flags for what ATen itself runs here (an ISA cap such as
    ``ATEN_CPU_CAPABILITY=avx2`` caps the kernel too)."""
    capability = torch.backends.cpu.get_cpu_capability()
    isa = {"AVX512": ["-march=native"], "AVX2": ["-mavx2", "-mfma", "-mf16c"]}.get(capability, [])
    return ["-O3", "-fopenmp", *isa]


@lru_cache(maxsize=1)
def build() -> Callable[..., torch.Tensor] | None:
    """The compiled kernel (built once per machine, source and torch version), or ``None`` with a
    warning where it cannot be built."""
    flags = compile_flags()
    key = content_hash(SOURCE.read_text(), flags, torch.__version__, cpu_isa(), isa_env())[:16]
    name = f"ssr_decode_attention_{key}"
    directory = cache_root() / "kernels" / name
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as err:  # no compiler, no headers: SDPA does the work
        log.warning("decode-attention kernel not built (%s: %s); using SDPA", type(err).__name__, err)
        return None
    log.info("decode-attention kernel ready (%s, %.1fs)", " ".join(flags), time.perf_counter() - started)
    return module.decode_attention


def sdpa_mask(pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask ``[n, 1, 1, span]`` of a decode step: slot i sees positions 0..pos[i] (in
    the compute dtype: a boolean one costs the CPU kernel a conversion). Built once per step."""
    span = int(pos.max()) + 1
    past = torch.arange(span, device=pos.device)[None] <= pos[:, None]
    return torch.zeros(past.shape, dtype=dtype, device=pos.device).masked_fill(~past, float("-inf"))[
        :, None, None
    ]


def sdpa(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: torch's SDPA over the longest span, masked per slot (``mask``: the step's
    :func:`sdpa_mask`, built here when not given)."""
    mask = sdpa_mask(pos, q.dtype) if mask is None else mask
    n, span = q.shape[0], mask.shape[-1]
    return F.scaled_dot_product_attention(q, keys[:n, :, :span], values[:n, :, :span], attn_mask=mask)


def _probe(kernel: Callable[..., torch.Tensor], kv: int, group: int, dim: int, dtype: torch.dtype) -> str:
    """``kernel`` or ``sdpa`` by a correctness check and a timing on the model's attention shape."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(PROBE_SLOTS, kv, group, dim, generator=gen).to(dtype)
    keys, values = (torch.randn(PROBE_SLOTS, kv, PROBE_SPAN, dim, generator=gen).to(dtype) for _ in range(2))
    pos = torch.randint(PROBE_SPAN // 2, PROBE_SPAN, (PROBE_SLOTS,), generator=gen)
    try:
        error = (kernel(q, keys, values, pos).float() - sdpa(q, keys, values, pos).float()).abs().max().item()
    except RuntimeError as err:
        log.warning("decode-attention kernel failed its check (%s); using SDPA", err)
        return "sdpa"
    if not error <= TOLERANCE.get(dtype, 3e-2):
        log.warning("decode-attention kernel differs from SDPA by %.3g on the check; using SDPA", error)
        return "sdpa"
    seconds = {}
    for name, fn in (("kernel", kernel), ("sdpa", sdpa), ("kernel", kernel), ("sdpa", sdpa)):
        fn(q, keys, values, pos)
        started = time.perf_counter()
        for _ in range(3):
            fn(q, keys, values, pos)
        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - started)
    choice = "kernel" if seconds["kernel"] < seconds["sdpa"] else "sdpa"
    log.info(
        "decode attention -> %s (probe %d slots x %d positions, %s: kernel %.1f ms, sdpa %.1f ms)",
        choice,
        PROBE_SLOTS,
        PROBE_SPAN,
        dtype,
        1000 * seconds["kernel"] / 3,
        1000 * seconds["sdpa"] / 3,
    )
    return choice


@cache
def _resolve(choice: str, device: str, kv: int, group: int, dim: int, dtype: torch.dtype) -> Attention:
    if choice == "sdpa" or device != "cpu":
        return sdpa
    kernel = build()
    if kernel is None:
        if choice == "kernel":
            raise RuntimeError(
                f"{ENV}=kernel but the decode-attention kernel could not be built (see the log)"
            )
        return sdpa
    if choice == "kernel" or _probe(kernel, kv, group, dim, dtype) == "kernel":
        return kernel
    return sdpa


def decode_attention(device: torch.device, kv: int, group: int, dim: int, dtype: torch.dtype) -> Attention:
    """The attention a decode step of this shape uses here (see the module doc)."""
    return _resolve(setting(), torch.device(device).type, kv, group, dim, dtype)
