"""Benchmarks that run inside one process each: matmul peak, training levers, batching/padding,
generation, judges and the drift-callback evaluation."""

from __future__ import annotations

import math
import random
import statistics
import time
from typing import Any

from common import LORA, MAX_LENGTH, FlopModel, bench_records, cpu_seconds, loadavg
from gen_engines import run_generation_engines


def _timed(fn: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - t, cpu_seconds() - c


# -- machine peak ----------------------------------------------------------------------------------


def run_matmul(args: dict[str, Any]) -> dict[str, Any]:
    """bf16 and fp32 torch.matmul FLOP/s on large square matrices (best of a few repeats)."""
    import torch

    n = args.get("n", 4096)
    out: dict[str, Any] = {"n": n, "threads": torch.get_num_threads()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm
        rates = []
        for _ in range(args.get("repeats", 3)):
            t = time.perf_counter()
            a @ b
            rates.append(2 * n**3 / (time.perf_counter() - t))
        out[f"{name}_flops_per_s"] = max(rates)
        out[f"{name}_all"] = rates
    out["loadavg"] = loadavg()
    return out


# -- training levers on one fixed batch -----------------------------------------------------------


def run_levers(args: dict[str, Any]) -> dict[str, Any]:
    """Forward+backward of the ssr loss on the same batch, variants interleaved round-robin."""
    import torch
    import torch.nn.functional as F

    from ssr.data.prompts import PromptConfig
    from ssr.data.tokenize import tokenize_all
    from ssr.models.loading import ModelSpec, apply_peft, cast_frozen_linear_weights, load_model
    from ssr.training.datamodule import collate
    from ssr.training.module import response_token_loss

    spec = ModelSpec(name_or_path=args["model"])

    def build(precast: bool) -> Any:
        model, tok = load_model(spec)
        model = apply_peft(model, dict(LORA))
        if precast:
            cast_frozen_linear_weights(model, torch.bfloat16)
        model.train()
        return model, tok

    fp32_model, tok = build(False)
    cast_model, _ = build(True)
    records = bench_records(args["batch_size"], tok)
    rows, _ = tokenize_all(tok, records, [r.gold for r in records], PromptConfig(), MAX_LENGTH)
    padded = collate(rows, tok.pad_token_id)
    packed = collate(rows, tok.pad_token_id, packing=True)

    def full_logits_loss(model: Any, b: dict[str, Any]) -> torch.Tensor:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            b["labels"][:, 1:].reshape(-1),
            reduction="sum",
        )

    def ssr_loss(model: Any, b: dict[str, Any], mask: bool = True) -> torch.Tensor:
        return response_token_loss(
            model, b["input_ids"], b["attention_mask"] if mask else None, b["labels"], b.get("position_ids")
        )

    variants: dict[str, tuple[str, Any]] = {
        "fp32 (no autocast)": ("fp32", lambda: ssr_loss(fp32_model, padded)),
        "bf16 autocast, fp32 weights (before)": ("bf16", lambda: ssr_loss(fp32_model, padded)),
        "bf16 autocast, frozen weights precast (default)": ("bf16", lambda: ssr_loss(cast_model, padded)),
        "  + padding-free packing": ("bf16", lambda: ssr_loss(cast_model, packed)),
        "  + no attention mask (is_causal; right padding)": (
            "bf16",
            lambda: ssr_loss(cast_model, padded, mask=False),
        ),
        "  - response-only logits (full-vocab logits everywhere)": (
            "bf16",
            lambda: full_logits_loss(cast_model, padded),
        ),
    }
    if args.get("compile"):
        compiled = torch.compile(cast_model)
        variants["  + torch.compile (after 1 untimed compile call)"] = (
            "bf16",
            lambda: ssr_loss(compiled, padded),
        )
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    losses: dict[str, float] = {}
    compile_s = None
    for rnd in range(args["rounds"]):
        for name, (precision, fn) in variants.items():

            def step(fn: Any = fn, precision: str = precision) -> float:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = fn()
                loss.backward()
                return loss.item()

            if rnd == 0 and "compile" in name:
                _, compile_s, _ = _timed(step)
            loss, w, c = _timed(step)
            fp32_model.zero_grad(set_to_none=True)
            cast_model.zero_grad(set_to_none=True)
            wall[name].append(w)
            cpu[name].append(c)
            losses[name] = loss
    tokens = padded["num_tokens"]
    profile = profile_step(lambda: variants["bf16 autocast, frozen weights precast (default)"][1]())
    cast_model.zero_grad(set_to_none=True)
    out = {
        "profile": profile,
        "rows": len(rows),
        "tokens": tokens,
        "padded_shape": list(padded["input_ids"].shape),
        "rounds": args["rounds"],
        "variants": {
            k: {
                "wall_s": statistics.median(wall[k]),
                "cpu_s": statistics.median(cpu[k]),
                "all_wall_s": [round(x, 2) for x in wall[k]],
                "tokens_per_s": tokens / statistics.median(wall[k]),
                "tokens_per_cpu_s": tokens / statistics.median(cpu[k]),
                "loss_sum": losses[k],
            }
            for k in variants
        },
        "compile_s": compile_s,
        "flop_model": FlopModel.of(cast_model).__dict__,
        "loadavg": loadavg(),
    }
    return out


PROFILE_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
    "attention (sdpa)": ("aten::_scaled_dot_product",),
    "LoRA dropout RNG (bernoulli_)": ("aten::bernoulli",),
    "casts and copies": ("aten::copy_", "aten::_to_copy"),
}


def profile_step(loss_fn: Any) -> dict[str, float]:
    """Share of self CPU time per op group for one bf16 forward+backward (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
    totals = {k: 0.0 for k in PROFILE_GROUPS}
    totals["element-wise and other"] = 0.0
    for event in prof.key_averages():
        group = next(
            (g for g, prefixes in PROFILE_GROUPS.items() if event.key.startswith(prefixes)),
            "element-wise and other",
        )
        totals[group] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


# -- batching / padding statistics of the default SQuAD config ------------------------------------


def run_padding(args: dict[str, Any]) -> dict[str, Any]:
    """Padded vs real tokens for the default SQuAD-2 training set: random batches, length-grouped
    batches (SSRDataModule) and padding-free packing (no padding at all)."""
    from common import squad_path

    from ssr.data.adapters import squad_v2, subsample
    from ssr.data.prompts import PromptConfig
    from ssr.data.tokenize import tokenize_all
    from ssr.models.loading import ModelSpec, load_tokenizer
    from ssr.training.datamodule import LengthGroupedBatchSampler

    tok = load_tokenizer(ModelSpec(name_or_path=args["model"]))
    records = subsample(
        squad_v2(str(squad_path()), split="train"), max_rows=args["rows"], balance=True, seed=0
    )
    rows, _ = tokenize_all(tok, records, [r.gold for r in records], PromptConfig(), MAX_LENGTH)
    lengths = [len(r.input_ids) for r in rows]
    bs = args["batch_size"]

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    idx = list(range(len(rows)))
    random.Random(0).shuffle(idx)
    random_batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    grouped = list(LengthGroupedBatchSampler(lengths, bs, shuffle=True, seed=0))
    real = sum(lengths)
    return {
        "rows": len(rows),
        "batch_size": bs,
        "real_tokens": real,
        "response_tokens": sum(r.num_response_tokens for r in rows),
        "mean_length": real / len(rows),
        "random_padded_tokens": padded(random_batches),
        "grouped_padded_tokens": padded(grouped),
        "grouped_rows": sum(len(b) for b in grouped),
    }


# -- judges ------------------------------------------------------------------------------------------


def run_judges(args: dict[str, Any]) -> dict[str, Any]:
    from ssr.data.prompts import DEFAULT_UNANSWERABLE
    from ssr.judges.base import JudgeItem
    from ssr.judges.rule_qa import RuleQAJudge
    from ssr.models.loading import EMBEDDED, ModelSpec, load_tokenizer

    tok = load_tokenizer(ModelSpec(name_or_path=args["model"]))
    records = bench_records(args["hf_items"], tok)
    items = [
        JudgeItem(
            id=r.id,
            question=r.question,
            gold=r.gold,
            candidate=(r.gold if i % 2 else f"The answer is {r.gold}."),
            document=r.document,
            answerable=r.answerable,
        )
        for i, r in enumerate(records)
    ]
    out: dict[str, Any] = {}
    rule = RuleQAJudge(DEFAULT_UNANSWERABLE)
    many = (items * (args["rule_items"] // len(items) + 1))[: args["rule_items"]]
    _, w, c = _timed(lambda: rule.judge_batch(many))
    out["rule_qa"] = {"items": len(many), "wall_s": w, "cpu_s": c, "items_per_s": len(many) / w}

    from ssr.judges.hf import HFJudge

    if args["model"] == EMBEDDED:
        make = lambda: HFJudge(model=EMBEDDED, batch_size=args["hf_batch_size"])  # noqa: E731
    else:  # the tiny random model of --quick has no directory to load from
        from ssr.models.loading import load_model

        make = lambda: HFJudge(  # noqa: E731
            model=args["model"],
            batch_size=args["hf_batch_size"],
            model_and_tokenizer=load_model(ModelSpec(name_or_path=args["model"])),
        )
    judge, load_s, _ = _timed(make)
    judge.judge_batch(items[: args["hf_batch_size"]])  # warm
    prompt_tokens = sum(
        len(judge.tokenizer(judge.render(x), add_special_tokens=False)["input_ids"]) for x in items
    )
    _, w, c = _timed(lambda: judge.judge_batch(items))
    out["hf"] = {
        "items": len(items),
        "batch_size": args["hf_batch_size"],
        "load_s": load_s,
        "wall_s": w,
        "cpu_s": c,
        "items_per_s": len(items) / w,
        "prompt_tokens_per_s": prompt_tokens / w,
        "loadavg": loadavg(),
    }
    return out


# -- drift callback evaluation -------------------------------------------------------------------


def _scaled_limits(limits: Any, fraction: float) -> Any:
    """Docs-per-task limits times ``fraction`` (at least 1 doc); shares (<1) scale too."""
    if fraction >= 1 or limits is None:
        return limits
    if isinstance(limits, dict):
        return {k: _scaled_limits(v, fraction) for k, v in limits.items()}
    if isinstance(limits, float) and limits < 1:
        return limits * fraction
    return max(1, math.ceil(limits * fraction))


def run_drift(args: dict[str, Any]) -> dict[str, Any]:
    """The per-epoch work of GeneralizationDriftCallback: the ``local`` lm-eval suite at its default
    limits plus self-drift, on the LoRA-wrapped model stored as training stores it in
    ``args["precision"]`` (frozen weights precast to bf16 under ``bf16-mixed``).

    With ``fraction < 1`` the suite runs on that share of each task's docs and its time is scaled
    by ``1 / fraction`` (an estimate: lm-eval's time is close to linear in the number of docs)."""
    import importlib.util

    if importlib.util.find_spec("ssr.eval.drift_callback") is None:
        return {"pending": "ssr.eval.drift_callback is not in this checkout (branch evalsuite not merged)"}
    import torch

    from ssr.eval.evaluate import evaluate_model
    from ssr.eval.self_drift import SelfDriftConfig, build_reference
    from ssr.eval.suite import SuiteConfig
    from ssr.models.loading import ModelSpec, apply_peft, cast_frozen_linear_weights, load_model

    fraction = float(args.get("fraction", 1.0))
    from common import shipped
    from omegaconf import OmegaConf

    evaluation = shipped().eval  # the main job's evaluation settings, as composed
    suite_cfg = OmegaConf.to_container(evaluation.suite)
    suite = SuiteConfig.from_mapping(suite_cfg)
    scaled = SuiteConfig.from_mapping({**suite_cfg, "limits": _scaled_limits(suite.limits, fraction)})
    drift_cfg = OmegaConf.to_container(evaluation.self_drift)
    drift = SelfDriftConfig.from_mapping(drift_cfg)
    model, tok = load_model(ModelSpec(name_or_path=args["model"]))
    model = apply_peft(model, dict(LORA))
    precision = args.get("precision", "bf16-mixed")
    if precision.startswith("bf16"):
        cast_frozen_linear_weights(model, torch.bfloat16)  # as SSRModule stores it under bf16-mixed
    ref, ref_s, _ = _timed(lambda: build_reference(model, tok, drift, precision))
    _, drift_s, _ = _timed(
        lambda: evaluate_model(model, tok, SuiteConfig(), drift, reference=ref, mixed_precision=precision)
    )
    off = SelfDriftConfig.from_mapping({**drift_cfg, "enabled": False})
    _, suite_s, suite_cpu = _timed(lambda: evaluate_model(model, tok, scaled, off, mixed_precision=precision))
    # what the callback pays after every epoch: the same evaluation again in the same process
    _, epoch_s, _ = _timed(
        lambda: evaluate_model(model, tok, suite, drift, reference=ref, mixed_precision=precision)
    )
    return {
        "suite": suite.name,
        "tasks": suite.tasks,
        "limits": suite.limits,
        "fraction": fraction,
        "precision": precision,
        "measured_limits": scaled.limits,
        "self_drift": drift.__dict__,
        "reference_s": ref_s,
        "self_drift_s": drift_s,
        "suite_measured_s": suite_s,
        "suite_cpu_s": suite_cpu,
        "eval_wall_s": suite_s / fraction + drift_s,
        "epoch_eval_s": epoch_s,
        "loadavg": loadavg(),
    }


TASKS = {
    "matmul": run_matmul,
    "levers": run_levers,
    "padding": run_padding,
    "generation_engines": run_generation_engines,
    "judges": run_judges,
    "drift": run_drift,
}
