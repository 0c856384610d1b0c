"""The one place that decides compute precision: measured on CPU, by capability on CUDA.

``precision: auto`` (the default of every stage) resolves once per machine to a Lightning precision
string. On CPU it times a small fp32 and bf16 matmul (best of a few interleaved rounds) and picks
``bf16-mixed`` only where bf16 is measured faster (AVX512-BF16 / AMX machines), else ``32-true``
(AVX2-only CPUs compute bf16 matmuls in a reference loop, ~70x slower than fp32). On CUDA:
``bf16-mixed`` where the GPU supports bf16, else ``16-mixed`` (Lightning adds a grad scaler), else
``32-true``. The measured verdict is cached
under ``$SSR_CACHE/precision``, keyed by the CPU / GPU, its flags, the ISA-capping environment and
the torch version. Explicit settings (``bf16-mixed``, ``32-true``, ``bf16``, ``none``...) pass through
and are honoured by every stage: training, generation, judges, lm-eval and self-drift.
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

from ssr.runtime.files import atomic_write_text
from ssr.runtime.hardware import cpu_isa, device_name, isa_env
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root

log = logging.getLogger(__name__)

AUTO = "auto"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Lightning precision strings -> the autocast dtype inference paths use under them
LIGHTNING: dict[str, torch.dtype | None] = {
    "32-true": None,
    "32": None,
    "64-true": None,
    "64": None,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "bf16": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "16": torch.float16,
}
NO_AUTOCAST = {"none", "null", "fp32", "float32", "32", "32-true", "64", "64-true"}
PRECISION_CHOICES = (AUTO, *LIGHTNING)
# bf16 must beat fp32 by this factor on every probed shape (autocast adds casts of its own)
BF16_MARGIN = 1.1
# (m, k, n): a training/prefill-shaped and a decode-shaped matmul
PROBE_SHAPES = ((512, 512, 512), (32, 576, 1536))
# rounds of the probe, fp32 and bf16 interleaved; the best round per dtype and shape counts (another
# process only ever slows a round, so one contended round cannot flip a cached verdict)
PROBE_ROUNDS = 3
CACHE_VERSION = 2  # 2: best of PROBE_ROUNDS interleaved rounds (1: one round, fp32 then bf16)


def torch_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """A config dtype name (``bfloat16``, ``bf16``, ``float32``...) as a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@dataclass
class PrecisionChoice:
    """What a setting resolved to on this machine, and the measurements behind it."""

    setting: str
    precision: str  # a Lightning precision string
    device: str  # cpu | cuda
    device_name: str
    isa: list[str]
    torch_version: str
    reason: str
    gflops: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> shape -> GFLOP/s
    isa_env: dict[str, str] = field(default_factory=dict)
    cached: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return LIGHTNING[self.precision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        figures = ", ".join(f"{dtype} {min(v.values()):.1f}" for dtype, v in self.gflops.items() if v)
        measured = f" (min GFLOP/s over probe shapes: {figures})" if figures else ""
        return (
            f"precision {self.setting} -> {self.precision} on {self.device} [{self.device_name}; "
            f"isa {','.join(self.isa) or '-'}]: {self.reason}{measured}"
        )


def matmul_gflops(
    dtype: torch.dtype, shape: tuple[int, int, int], device: str = "cpu", budget_s: float = 0.15
) -> float:
    """Throughput of ``(m,k) @ (k,n)`` in ``dtype``: one warm-up, then repeats for ``budget_s``."""
    m, k, n = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    iters, start = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return 2 * m * k * n * iters / elapsed / 1e9


Timer = Callable[[torch.dtype, tuple[int, int, int]], float]


def measure_cpu(timer: Timer = matmul_gflops, rounds: int = PROBE_ROUNDS) -> dict[str, dict[str, float]]:
    """Best GFLOP/s of fp32 and bf16 on each probe shape over ``rounds`` interleaved rounds
    (``timer`` is injectable for tests)."""
    out: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    for _ in range(rounds):
        for shape in PROBE_SHAPES:
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                key = "x".join(map(str, shape))
                out[name][key] = max(out[name].get(key, 0.0), round(float(timer(dtype, shape)), 2))
    return out


def choose_cpu(gflops: dict[str, dict[str, float]], margin: float = BF16_MARGIN) -> tuple[str, str]:
    """``bf16-mixed`` only if bf16 beats fp32 by ``margin`` on every probed shape; with the reason."""
    ratios = {s: gflops["bf16"][s] / max(gflops["fp32"][s], 1e-9) for s in gflops["fp32"]}
    worst = min(ratios.values())
    if worst >= margin:
        return "bf16-mixed", f"bf16 measured {worst:.2f}x fp32 or faster"
    return "32-true", f"bf16 measured {worst:.2f}x fp32 on its worst shape (< {margin}x): fp32"


def _cache_file(key: dict[str, Any]):
    return cache_root() / "precision" / f"{content_hash(key)}.json"


def _choose_cuda() -> tuple[str, str]:
    if torch.cuda.is_bf16_supported():
        return "bf16-mixed", "CUDA device supports bf16"
    if torch.cuda.get_device_capability(0) >= (7, 0):
        return "16-mixed", "CUDA device without bf16: fp16 with a grad scaler"
    return "32-true", "CUDA device older than compute capability 7.0: fp32"


def resolve(
    setting: str | None = AUTO,
    device: str = "cpu",
    *,
    timer: Timer | None = None,
    use_cache: bool = True,
) -> PrecisionChoice:
    """Resolve a precision setting for ``device`` (``cpu`` or ``cuda``); ``auto`` is decided here."""
    setting = AUTO if setting is None else str(setting)
    device = "cuda" if device in ("cuda", "gpu") else "cpu"
    if setting not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}; got {setting!r}")
    base = dict(
        setting=setting,
        device=device,
        device_name=device_name(device),
        isa=cpu_isa() if device == "cpu" else [],
        torch_version=torch.__version__,
        isa_env=isa_env(),
    )
    if setting != AUTO:
        return PrecisionChoice(precision=setting, reason="set explicitly", **base)
    if device == "cuda":
        precision, reason = _choose_cuda()
        return PrecisionChoice(precision=precision, reason=reason, **base)
    key = {k: base[k] for k in ("device_name", "isa", "torch_version", "isa_env")}
    key.update(version=CACHE_VERSION, threads=torch.get_num_threads(), shapes=PROBE_SHAPES)
    path = _cache_file(key)
    if use_cache and timer is None and path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stored = json.loads(path.read_text(encoding="utf-8"))
            return PrecisionChoice(**{**stored, "setting": setting, "cached": True})
    gflops = measure_cpu(timer or matmul_gflops)
    precision, reason = choose_cpu(gflops)
    choice = PrecisionChoice(precision=precision, reason=reason, gflops=gflops, **base)
    if use_cache and timer is None:
        atomic_write_text(path, json.dumps(choice.to_dict(), indent=1))
    return choice


def lightning_precision(setting: str | None, accelerator: str | None) -> PrecisionChoice:
    """Resolve ``trainer.precision`` for ``trainer.accelerator`` (``auto`` means CUDA if present)."""
    acc = str(accelerator or "auto").lower()
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return resolve(setting, "cuda" if on_gpu else "cpu")


def autocast_dtype(name: str | torch.dtype | None, device: str = "cpu") -> torch.dtype | None:
    """The autocast dtype of an inference path: ``auto`` resolves for ``device``; ``bf16``/``fp16``,
    Lightning strings (``bf16-mixed``...) or a dtype; ``None``/``none``/``fp32`` -> no autocast."""
    if name is None or isinstance(name, torch.dtype):
        return None if name == torch.float32 else name
    key = str(name).lower()
    if key == AUTO:
        return resolve(AUTO, device).autocast_dtype
    if key in NO_AUTOCAST:
        return None
    if key in LIGHTNING:
        return LIGHTNING[key]
    if key in DTYPES:
        return DTYPES[key]
    raise ValueError(f"unknown precision {name!r}; use auto, bf16, fp16, none or a Lightning precision")


def autocast_to(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device_type``, or no autocast when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def trainer_autocast(trainer: Any) -> str | None:
    """The autocast dtype a Lightning Trainer trains under: ``bf16``/``fp16`` for ``*-mixed``
    precision, else ``None``."""
    precision = str(getattr(trainer, "precision", ""))
    if precision.startswith("bf16-mixed"):
        return "bf16"
    if precision.startswith("16-mixed"):
        return "fp16"
    return None
