"""Step timing and the FLOP formula of a LoRA training step (no side effects on import: the GPU
check's meter imports them inside a running ``ssr-train``)."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

# -- model FLOPs -------------------------------------------------------------------------------


@dataclass
class FlopModel:
    """Useful training FLOPs of a LoRA step (frozen base), the formula stated in RESULTS.md:

    per row of T tokens with R response tokens:
        (4 * N_lin + 6 * N_lora) * T      frozen linears: forward 2NT + input-gradient 2NT;
                                           LoRA: forward 2, input-grad 2, weight-grad 2 per param
      + 6 * n_layers * d_attn * T^2        causal attention QK^T and AV (forward 2*T^2*d, backward 2x)
      + 4 * vocab * d_model * R            output head at response positions (forward + input-grad)
    Embedding lookups are free; norms, activations and the optimizer are not counted.
    """

    n_linear: int
    n_lora: int
    n_layers: int
    d_attn: int
    d_model: int
    vocab: int

    @classmethod
    def of(cls, peft_model: Any) -> FlopModel:
        import torch

        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        head = base.get_output_embeddings()
        n_linear = 0
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not head and "lora_" not in name:
                n_linear += module.weight.numel()
        n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        cfg = base.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            n_linear=n_linear,
            n_lora=n_lora,
            n_layers=cfg.num_hidden_layers,
            d_attn=cfg.num_attention_heads * head_dim,
            d_model=cfg.hidden_size,
            vocab=cfg.vocab_size,
        )

    def step(self, lengths: list[int], response_tokens: int) -> float:
        t = sum(lengths)
        t2 = sum(x * x for x in lengths)
        return (
            (4 * self.n_linear + 6 * self.n_lora) * t
            + 6 * self.n_layers * self.d_attn * t2
            + 4 * self.vocab * self.d_model * response_tokens
        )


# -- timing ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class StepLog:
    """Per optimizer step: end time (wall + CPU), real tokens, response tokens, row lengths."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    response: list[int] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    padded: list[int] = field(default_factory=list)
    start_wall: float = 0.0
    start_cpu: float = 0.0

    def begin(self) -> None:
        self.start_wall, self.start_cpu = time.perf_counter(), cpu_seconds()

    def record_batch(self, lengths: list[int], response: int, padded: int) -> None:
        self.lengths.append(list(lengths))
        self.tokens.append(sum(lengths))
        self.response.append(int(response))
        self.padded.append(int(padded))

    def end_step(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(cpu_seconds())

    def summary(self, warmup: int, flops: FlopModel | None = None) -> dict[str, Any]:
        """Throughput over the steps after ``warmup`` (timed from the end of the last warmup step)."""
        n = min(len(self.wall), len(self.tokens))
        if n <= warmup:
            raise RuntimeError(f"only {n} steps recorded, need more than warmup={warmup}")
        t0 = self.wall[warmup - 1] if warmup else self.start_wall
        c0 = self.cpu[warmup - 1] if warmup else self.start_cpu
        wall = self.wall[n - 1] - t0
        cpu = self.cpu[n - 1] - c0
        tokens = sum(self.tokens[warmup:n])
        response = sum(self.response[warmup:n])
        padded = sum(self.padded[warmup:n])
        out = {
            "steps": n - warmup,
            "warmup_steps": warmup,
            "warmup_wall_s": (self.wall[warmup - 1] - self.start_wall) if warmup else 0.0,
            "rows": sum(len(x) for x in self.lengths[warmup:n]),
            "wall_s": wall,
            "cpu_s": cpu,
            "tokens": tokens,
            "response_tokens": response,
            "padded_tokens": padded,
            "tokens_per_s": tokens / wall,
            "response_tokens_per_s": response / wall,
            "tokens_per_cpu_s": tokens / cpu if cpu else float("nan"),
            "median_step_tokens_per_s": statistics.median(
                tok / (b - a)
                for tok, a, b in zip(
                    self.tokens[warmup:n], [t0, *self.wall[warmup : n - 1]], self.wall[warmup:n]
                )
            ),
            "step_wall_s": [
                round(b - a, 3) for a, b in zip([t0, *self.wall[warmup : n - 1]], self.wall[warmup:n])
            ],
        }
        if flops is not None:
            total = sum(
                flops.step(lens, r) for lens, r in zip(self.lengths[warmup:n], self.response[warmup:n])
            )
            out["model_flops"] = total
            out["flops_per_s"] = total / wall
        return out
