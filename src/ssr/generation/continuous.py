"""Continuous batching over a slotted, preallocated KV cache, for Llama-family decoders.

Every request owns a slot of a KV cache allocated once per call (``[layers, slots, kv_heads,
max_len, head_dim]``); one forward per decoding step runs over the active slots only, each at its
own position. A finished request leaves its slot at once and the next queued prompt (longest
first) is prefilled into it. Finished slots are compacted to the front (the last active slot's
cache rows are copied into the hole), so a step always reads a contiguous ``[:n_active]`` view
and only up to the longest live sequence.

The forward is written here over the model's own weights (fused q/k/v and gate/up matmuls, a
precomputed rotary table, grouped-query attention without repeating the keys): transformers'
per-step machinery (mask building, cache objects, logits processors) is what dominated a CPU
decoding step. A PEFT LoRA model is run with its active adapters merged into these fused
weights (``get_delta_weight``), so the trained model generates, never its base. Architectures
or adapters it does not cover are reported by :func:`unsupported_reason`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssr.generation.decode_attention import decode_attention, sdpa, sdpa_mask
from ssr.runtime.distributed import zero3_partitioned

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
# prompt tokens (padded) prefilled in one forward at most
PREFILL_TOKENS = 4096
# the KV cache is sized to fit this budget (slots are reduced, never the sequence length)
KV_BUDGET_BYTES = 3 * 2**30

OnDone = Callable[[list[int], list[list[int]]], None]


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked and when a request ends."""

    max_new_tokens: int
    stop_ids: frozenset[int] = frozenset()
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0


@dataclass
class _Layer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    down: torch.Tensor
    ln_attn: torch.Tensor
    ln_mlp: torch.Tensor


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM under a PEFT wrapper (its LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _lora_free(module: torch.nn.Module) -> bool:
    return not hasattr(module, "lora_A")


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why this engine cannot run ``model`` (``None``: it can)."""
    lm = causal_lm(model)
    if zero3_partitioned(lm):  # gathering the whole model on every rank would undo ZeRO-3
        return (
            "DeepSpeed ZeRO-3 partitioned weights (read directly here; hf's generate gathers them per layer)"
        )
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if getattr(cfg, "use_sliding_window", False) or (
        kind == "mistral" and getattr(cfg, "sliding_window", None)
    ):
        return "sliding-window attention"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return f"position-dependent rope scaling {rope['rope_type']!r}"
    for name, module in lm.named_modules():
        if not hasattr(module, "lora_A"):
            if type(module).__name__ == "ModulesToSaveWrapper":
                return f"PEFT modules_to_save at {name}"
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if getattr(module, "lora_variant", {}).get(adapter) is not None:
                return f"a LoRA variant (DoRA...) at {name}"
            if getattr(module, "lora_bias", {}).get(adapter):
                return f"LoRA bias at {name}"
    return None


def _linear(module: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of a linear layer as it computes now (active LoRA adapters merged)."""
    if _lora_free(module):
        return module.weight.to(dtype), None if module.bias is None else module.bias.to(dtype)
    base = module.get_base_layer()
    weight = base.weight
    if not module.merged and not module.disable_adapters:
        deltas = [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A]
        if deltas:
            weight = weight.float() + sum(d.float() for d in deltas)
    return weight.to(dtype), None if base.bias is None else base.bias.to(dtype)


def _fused(
    modules: Sequence[torch.nn.Module], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    parts = [_linear(m, dtype) for m in modules]
    weight = torch.cat([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
    if all(b is None for _, b in parts):
        return weight, None
    biases = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts]
    return weight, torch.cat(biases)


def attention_shape(config: Any) -> tuple[int, int, int]:
    """``(kv heads, query heads per kv head, head dim)`` of a Llama-family config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_key_value_heads, config.num_attention_heads // config.num_key_value_heads, head_dim


class LlamaRunner:
    """The model's weights laid out for decoding, and its forward over a slotted KV cache."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the continuous engine cannot run this model: {reason}")
        lm = causal_lm(model)
        cfg = lm.config
        self.dtype = dtype
        self.device = next(lm.parameters()).device
        self.n_heads = cfg.num_attention_heads
        self.n_kv, self.group, self.head_dim = attention_shape(cfg)
        # the decode steps' attention, resolved once per call (see ssr.generation.decode_attention)
        self.attend = decode_attention(self.device, self.n_kv, self.group, self.head_dim, dtype)
        self.eps = cfg.rms_norm_eps
        self.max_positions = cfg.max_position_embeddings
        inner = lm.model
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm = inner.norm.weight.float()
        head_w, _ = _linear(lm.lm_head, dtype)
        self.lm_head = head_w
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv, qkv_b = _fused((att.q_proj, att.k_proj, att.v_proj), dtype)
            o, o_b = _linear(att.o_proj, dtype)
            gate_up, _ = _fused((mlp.gate_proj, mlp.up_proj), dtype)
            down, _ = _linear(mlp.down_proj, dtype)
            self.layers.append(
                _Layer(
                    qkv,
                    qkv_b,
                    o,
                    o_b,
                    gate_up,
                    down,
                    layer.input_layernorm.weight.float(),
                    layer.post_attention_layernorm.weight.float(),
                )
            )
        self.q_size = self.n_heads * self.head_dim
        self.cos = self.sin = torch.empty(0)

    def rope_table(self, length: int) -> None:
        """cos/sin of positions ``0..length-1`` (the model's own rotary module, fp32)."""
        pos = torch.arange(length, device=self.device)[None]
        probe = torch.empty(1, dtype=torch.float32, device=self.device)
        cos, sin = self.rotary(probe, pos)
        self.cos, self.sin = cos[0].float(), sin[0].float()

    def kv_cache(self, slots: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.layers), slots, self.n_kv, length, self.head_dim)
        return (
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            torch.zeros(shape, dtype=self.dtype, device=self.device),
        )

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (weight * x).to(self.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        h = self._norm(x, layer.ln_mlp)
        gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.down).float()

    def _rotary(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin at ``pos``, broadcast over heads (gathered once per forward, not per layer)."""
        return self.cos[pos].unsqueeze(-2), self.sin[pos].unsqueeze(-2)

    def _qkv(self, x: torch.Tensor, layer: _Layer, rotary: tuple[torch.Tensor, torch.Tensor]):
        h = self._norm(x, layer.ln_attn)
        qkv = F.linear(h, layer.qkv, layer.qkv_bias).float()
        heads = qkv.view(*qkv.shape[:-1], self.n_heads + 2 * self.n_kv, self.head_dim)
        # the query and key heads rotated in one pass (they are adjacent in the fused projection)
        qk = self._rope(heads[..., : self.n_heads + self.n_kv, :], *rotary).to(self.dtype)
        q, k = qk.split((self.n_heads, self.n_kv), dim=-2)
        return q, k, heads[..., self.n_heads + self.n_kv :, :].to(self.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._norm(x, self.norm), self.lm_head).float()

    def prefill(
        self, prompts: list[list[int]], first_slot: int, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Run prompts (right-padded to the longest: causal attention never sees the padding)
        into slots ``first_slot, first_slot + 1, ...``; next-token logits ``[prompts, vocab]``.
        The padding's cache rows lie past each prompt's end, where decoding writes before it reads."""
        b, n = len(prompts), max(map(len, prompts))
        ids = torch.zeros(b, n, dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt, device=self.device)
        rotary = self._rotary(torch.arange(n, device=self.device))
        slots = slice(first_slot, first_slot + b)
        x = self.embed[ids].float()
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, rotary)  # [b, n, heads, d]
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            keys[i, slots, :, :n] = k
            values[i, slots, :, :n] = v
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads
            )
            x = x + F.linear(out.transpose(1, 2).reshape(b, n, self.q_size), layer.o, layer.o_bias).float()
            x = self._mlp(x, layer)
        ends = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        return self._logits(x[torch.arange(b, device=self.device), ends])

    def decode(
        self, tokens: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """One step for slots ``0..n-1`` (``tokens``/``pos``: ``[n]``); next-token logits ``[n, vocab]``."""
        n = tokens.shape[0]
        rows = torch.arange(n, device=self.device)
        attend = self.attend
        if attend is sdpa:  # its mask built once per step, not per layer
            attend = functools.partial(sdpa, mask=sdpa_mask(pos, self.dtype))
        rotary = self._rotary(pos)
        x = self.embed[tokens].float()
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, rotary)  # q [n, heads, d], k/v [n, kv, d]
            keys[i, rows, :, pos] = k
            values[i, rows, :, pos] = v
            # the query heads sharing a kv head attend as one group: no repeated keys
            out = attend(q.view(n, self.n_kv, self.group, self.head_dim), keys[i], values[i], pos)
            x = x + F.linear(out.reshape(n, self.q_size), layer.o, layer.o_bias).float()
            x = self._mlp(x, layer)
        return self._logits(x)


def _pick(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator]) -> list[int]:
    """Greedy, or a sample after temperature, top-k and top-p (transformers' order), one
    generator per row."""
    if not sampling.do_sample:
        return logits.argmax(-1).tolist()
    scores = logits / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        scores, index = scores.topk(sampling.top_k, dim=-1)  # sorted, descending
    else:
        scores, index = scores.sort(dim=-1, descending=True)
    if sampling.top_p < 1.0:
        # keep the smallest prefix whose probability reaches top_p (at least one token)
        before = scores.softmax(-1).cumsum(-1) - scores.softmax(-1)
        scores = scores.masked_fill(before >= sampling.top_p, float("-inf"))
    probs = scores.softmax(-1)
    picks = [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, generators, strict=True)]
    return [int(index[row, k]) for row, k in enumerate(picks)]


@torch.inference_mode()
def continuous_generate_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    slots: int = 32,
    dtype: torch.dtype | None = None,
    on_done: OnDone | None = None,
    progress: bool = False,
) -> list[list[int]]:
    """New token ids per prompt (input order), each ending at its first stop token (kept) or at
    ``max_new_tokens``. ``slots``: rows decoded together (at most what
    :data:`KV_BUDGET_BYTES` holds). ``dtype``: the compute dtype (``None``: the model's). ``on_done(indices,
    ids)`` runs after every step in which requests finished. Sampled requests draw from their
    own generator seeded ``seed + index``: a prompt's sample does not depend on its neighbours."""
    results: list[list[int]] = [[] for _ in prompt_ids]
    if not prompt_ids:
        return results
    if sampling.max_new_tokens < 1:
        if on_done:
            on_done(list(range(len(prompt_ids))), results)
        return results
    lm = causal_lm(model)
    dtype = dtype or next(lm.parameters()).dtype
    t0 = time.perf_counter()
    runner = LlamaRunner(model, dtype)
    longest = max(len(p) for p in prompt_ids)
    if not longest:
        raise ValueError("every prompt needs at least one token")
    length = longest + sampling.max_new_tokens
    if length > runner.max_positions:
        log.warning("prompt + new tokens (%d) exceed the model's %d positions", length, runner.max_positions)
    per_slot = 2 * len(runner.layers) * runner.n_kv * length * runner.head_dim * runner.lm_head.element_size()
    slots = max(1, min(slots, len(prompt_ids), KV_BUDGET_BYTES // per_slot))
    keys, values = runner.kv_cache(slots, length)
    runner.rope_table(length)
    setup_s = time.perf_counter() - t0
    queue = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))[::-1]  # pop() = longest
    generators = {}
    active: list[int] = []  # request index per slot (slot = position in this list)
    pos: list[int] = []  # position of each slot's next token
    last: list[int] = []  # each slot's last token
    stops = sampling.stop_ids
    bar = tqdm(total=len(prompt_ids), desc="generate", unit="row", disable=not progress)
    steps = decode_s = prefill_s = 0.0

    def finish(done: list[int]) -> None:
        bar.update(len(done))
        if on_done:
            on_done(done, [results[i] for i in done])

    def gens(reqs: list[int]) -> list[torch.Generator]:
        return [generators[r] for r in reqs] if sampling.do_sample else []

    while queue or active:
        done: list[int] = []
        t = time.perf_counter()
        while queue and len(active) < slots:
            # the next prompts (similar lengths: the queue is sorted) prefilled as one batch
            take = min(slots - len(active), len(queue), max(1, PREFILL_TOKENS // len(prompt_ids[queue[-1]])))
            group = [queue.pop() for _ in range(take)]
            if sampling.do_sample:
                for req in group:
                    generators[req] = torch.Generator(device=runner.device).manual_seed(sampling.seed + req)
            first = len(active)
            logits = runner.prefill([list(prompt_ids[r]) for r in group], first, keys, values)
            for offset, (req, token) in enumerate(
                zip(group, _pick(logits, sampling, gens(group)), strict=True)
            ):
                results[req].append(token)
                if token in stops or sampling.max_new_tokens == 1:
                    done.append(req)
                    continue
                slot, target = first + offset, len(active)
                if slot != target:  # a row of this group ended at its first token: close the gap
                    n = len(prompt_ids[req])
                    keys[:, target, :, :n] = keys[:, slot, :, :n]
                    values[:, target, :, :n] = values[:, slot, :, :n]
                active.append(req)
                pos.append(len(prompt_ids[req]))
                last.append(token)
        prefill_s += time.perf_counter() - t
        if active:
            t = time.perf_counter()
            logits = runner.decode(
                torch.tensor(last, device=runner.device),
                torch.tensor(pos, device=runner.device),
                keys,
                values,
            )
            tokens = _pick(logits, sampling, gens(active))
            decode_s += time.perf_counter() - t
            steps += 1
            slot = 0
            while slot < len(active):
                req, token = active[slot], tokens[slot]
                results[req].append(token)
                if token in stops or len(results[req]) >= sampling.max_new_tokens:
                    done.append(req)
                    end = len(active) - 1
                    if slot != end:  # compact: the last slot moves into the hole (seen next)
                        span = pos[end] + 1
                        keys[:, slot, :, :span] = keys[:, end, :, :span]
                        values[:, slot, :, :span] = values[:, end, :, :span]
                        active[slot], pos[slot], tokens[slot] = active[end], pos[end], tokens[end]
                    del active[end], pos[end], last[end], tokens[end]
                    continue
                pos[slot] += 1
                last[slot] = token
                slot += 1
        if done:
            finish(done)
    bar.close()
    new = sum(len(r) for r in results)
    log.info(
        "continuous engine: %d prompts, %d new tokens, %d slots, %s; setup %.2fs, prefill %.1fs, "
        "%d decode steps %.1fs (%.1f ms/step, %.0f new tokens/s overall)",
        len(prompt_ids),
        new,
        slots,
        dtype,
        setup_s,
        prefill_s,
        steps,
        decode_s,
        1000 * decode_s / max(steps, 1),
        new / max(time.perf_counter() - t0, 1e-9),
    )
    return results
