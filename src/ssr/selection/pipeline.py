"""The cached stages before training: self-generation, rewriting, judging, target selection.

Each stage reads and writes the shared caches under ``SSR_CACHE`` (keyed by content), so any
entry point (``ssr-generate``, ``ssr-judge``, ``ssr-train``) runs only what is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssr.data.prompts import (
    PromptConfig,
    build_messages,
    fit_document,
    generation_prompt,
    prompt_length,
    render_prompt,
)
from ssr.data.records import Record
from ssr.generation.config import GeneratorConfig
from ssr.generation.generator import BaseModelGenerator
from ssr.judges.base import JudgeItem, run_judge, run_judge_sharded
from ssr.runtime.cache import JsonlCache, stage_lock
from ssr.runtime.distributed import Shard
from ssr.runtime.files import atomic_write_text
from ssr.selection.methods import (
    Candidate,
    MethodConfig,
    Selection,
    SelectionStats,
    select_targets,
    selection_stats,
)

log = logging.getLogger(__name__)
__all__ = ["BaseModelGenerator", "GeneratorConfig", "StageCounters", "run_selection"]  # re-exported


@dataclass
class StageCounters:
    """Rows served from cache vs computed, per stage (shown after every run)."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(
        self,
        stage: str,
        total: int,
        cached: int,
        computed: int,
        seconds: float,
        by_rank: list[int] | None = None,
    ) -> None:
        self.stages[stage] = {
            "rows": total,
            "cached": cached,
            "computed": computed,
            "seconds": round(seconds, 2),
        }
        if by_rank is not None:  # a multi-process run: rows each rank computed
            self.stages[stage]["computed_by_rank"] = by_rank

    def summary(self) -> str:
        return "; ".join(
            f"{k}: {v['cached']}/{v['rows']} cached, {v['computed']} computed in {v['seconds']}s"
            for k, v in self.stages.items()
        )


def answer_prompts(
    tokenizer: Any, records: list[Record], prompt_cfg: PromptConfig, max_tokens: int | None = None
) -> list[str]:
    """The prompts the model answers (documents cut to ``max_tokens`` prompt tokens)."""
    return [generation_prompt(tokenizer, r, prompt_cfg, max_tokens) for r in records]


def rewrite_prompts(
    tokenizer: Any,
    records: list[Record],
    prompt_cfg: PromptConfig,
    method: MethodConfig,
    max_tokens: int | None = None,
) -> list[str]:
    """Prompts asking the base model to restate each gold answer in its own words (SDFT/S3FT)."""
    out = []
    for r in records:

        def rewrite(messages: list[dict[str, str]], gold: str = r.gold) -> list[dict[str, str]]:
            last = messages[-1]
            content = method.rewrite_template.format(prompt=last["content"], gold=gold)
            return [*messages[:-1], {**last, "content": content}]

        messages = build_messages(r, prompt_cfg)
        if max_tokens is not None:
            length = lambda m: prompt_length(tokenizer, rewrite(m))  # noqa: E731
            messages = fit_document(tokenizer, r, prompt_cfg, length, max_tokens) or messages
        out.append(render_prompt(tokenizer, rewrite(messages)))
    return out


def judge_candidates(
    judge: Any,
    records: list[Record],
    candidates: list[str],
    cache_dir: Path,
    counters: StageCounters,
    stage: str,
    shard: Shard | None = None,
) -> list[Candidate]:
    """Judge each candidate against its record's gold answer, through the verdict cache (with a
    ``shard``: each rank its share, :func:`ssr.judges.base.run_judge_sharded`)."""
    import time

    items = [
        JudgeItem(
            id=r.id,
            question=r.question,
            gold=r.gold,
            candidate=c,
            document=r.document,
            answerable=r.answerable,
        )
        for r, c in zip(records, candidates, strict=True)
    ]
    path = Path(cache_dir) / "verdicts" / f"{judge.fingerprint()}.jsonl"
    batch_size = getattr(judge, "batch_size", 16)
    t0 = time.perf_counter()
    by_rank = None
    if shard is not None:
        verdicts, by_rank = run_judge_sharded(judge, items, path, shard, batch_size)
        computed = sum(by_rank)
    else:
        with stage_lock(path.with_suffix(".lock")):
            cache = JsonlCache(path)
            before = len(cache)
            verdicts = run_judge(judge, items, cache, batch_size=batch_size)
            computed = len(cache) - before
    counters.add(stage, len(items), len(items) - computed, computed, time.perf_counter() - t0, by_rank)
    return [
        Candidate(text=c, accept=v.accept, score=v.score, rationale=v.rationale, parsed=v.parsed)
        for c, v in zip(candidates, verdicts)
    ]


def generate_candidates(
    generator: BaseModelGenerator,
    records: list[Record],
    prompt_cfg: PromptConfig,
    method: MethodConfig,
    counters: StageCounters,
    shard: Shard | None = None,
) -> dict[str, list[str]]:
    """The model-written texts the method needs: own answers and/or rewrites of gold (with a
    ``shard``: each rank generates its share)."""
    out: dict[str, list[str]] = {}
    tok = generator.tokenizer
    jobs = []
    budget = generator.cfg.max_prompt_tokens
    if method.needs_self:
        jobs.append(("self", answer_prompts(tok, records, prompt_cfg, budget)))
    if method.needs_rewrite:
        jobs.append(("rewrite", rewrite_prompts(tok, records, prompt_cfg, method, budget)))
    for name, prompts in jobs:
        texts, stats = generator.generate(prompts, shard)
        counters.add(
            f"generate_{name}", stats.rows, stats.cached, stats.generated, stats.seconds, stats.by_rank
        )
        out[name] = texts
    return out


def fidelity_sample_indices(n_rows: int, sample: int) -> list[int]:
    """``sample`` row indices spread evenly over ``n_rows`` (the same rows on every run)."""
    k = min(sample, n_rows)
    return sorted({i * n_rows // k for i in range(k)}) if k > 0 else []


def fidelity_against_hf(
    generator: BaseModelGenerator,
    records: list[Record],
    prompt_cfg: PromptConfig,
    method: MethodConfig,
    judge: Any,
    judged: dict[str, list[Candidate] | None],
    cache_dir: Path,
    counters: StageCounters,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """What the server changes: on ``generator.fidelity_sample`` rows, the share of texts identical
    to generator=hf's (generated through the hf cache) and the judge's accept rate under each."""
    idx = fidelity_sample_indices(len(records), generator.cfg.fidelity_sample)
    if not idx:
        return {}
    sample = [records[i] for i in idx]
    hf_cfg = replace(generator.cfg, backend="hf", fidelity_sample=0)
    hf_counters = StageCounters()
    with BaseModelGenerator(generator.spec, hf_cfg, generator.cache_dir) as hf:
        hf_texts = generate_candidates(hf, sample, prompt_cfg, method, hf_counters, shard)
    out: dict[str, Any] = {"backend": generator.cfg.backend, "rows": len(idx)}
    for name, hf_rows in hf_texts.items():
        served = judged.get(name)
        if served is None:
            continue
        counters.stages[f"fidelity_hf_{name}"] = hf_counters.stages[f"generate_{name}"]
        hf_judged = judge_candidates(
            judge, sample, hf_rows, cache_dir, counters, f"fidelity_judge_{name}", shard
        )
        mine = [served[i] for i in idx]
        share = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
        out[name] = {
            "identical_to_hf": share([a.text == b for a, b in zip(mine, hf_rows)]),
            "accept_rate": share([c.accept for c in mine]),
            "accept_rate_hf": share([c.accept for c in hf_judged]),
            "same_verdict": share([a.accept == b.accept for a, b in zip(mine, hf_judged)]),
        }
        log.info(
            "fidelity (%s, %d rows): %.0f%% identical to generator=hf; judge accepts %.0f%% (%s) vs %.0f%% (hf)",
            name, len(idx), 100 * out[name]["identical_to_hf"], 100 * out[name]["accept_rate"],
            generator.cfg.backend, 100 * out[name]["accept_rate_hf"],
        )  # fmt: skip
    return out


def run_selection(
    records: list[Record],
    method: MethodConfig,
    prompt_cfg: PromptConfig,
    generator: BaseModelGenerator | None,
    judge: Any,
    cache_dir: Path,
    out_dir: Path,
    shard: Shard | None = None,
) -> tuple[list[Selection], SelectionStats, StageCounters]:
    """Generate (cached) -> judge (cached) -> select; writes selection.jsonl and selection_stats.json.

    ``judge`` and ``generator`` are required when ``method.needs_judge`` (``SSRDataModule`` and
    ``ssr.cli.config_checks`` check it before anything runs). With a ``shard`` (a multi-process
    run, every rank calls this) each rank generates and judges its share, every rank gets the
    same selection, and rank 0 writes the files before any rank returns."""
    counters = StageCounters()
    own = rewrites = None
    if method.needs_judge:
        if generator is None:
            raise ValueError(f"method={method.name} needs a generator for the base model's own texts")
        with generator:
            texts = generate_candidates(generator, records, prompt_cfg, method, counters, shard)
        if "self" in texts:
            own = judge_candidates(judge, records, texts["self"], cache_dir, counters, "judge_self", shard)
        if "rewrite" in texts:
            rewrites = judge_candidates(
                judge, records, texts["rewrite"], cache_dir, counters, "judge_rewrite", shard
            )
    selections = select_targets(method, records, own, rewrites)
    stats = selection_stats(method, selections, own, rewrites)
    if generator is not None and method.needs_judge and generator.cfg.backend != "hf":
        fidelity = fidelity_against_hf(
            generator,
            records,
            prompt_cfg,
            method,
            judge,
            {"self": own, "rewrite": rewrites},
            cache_dir,
            counters,
            shard,
        )
        if fidelity:
            stats.extra["fidelity"] = fidelity
    stats.extra["stages"] = counters.stages
    if shard is None:
        write_selection(out_dir, selections, stats)
    else:  # rank 0 writes; every rank waits for the files (and hears of a failure)
        shard.main_decides(lambda: write_selection(out_dir, selections, stats))
    log.info("selection (%s): %s", method.name, json.dumps(stats.by_source))
    if counters.stages:
        log.info("stage cache counters: %s", counters.summary())
    return selections, stats, counters


def write_selection(out_dir: Path, selections: list[Selection], stats: SelectionStats) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "selection.jsonl",
        "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in selections),
    )
    atomic_write_text(out_dir / "selection_stats.json", json.dumps(stats.to_dict(), indent=2))


def read_selection(path: Path) -> list[Selection]:
    with open(path, encoding="utf-8") as fh:
        return [Selection(**json.loads(line)) for line in fh if line.strip()]
