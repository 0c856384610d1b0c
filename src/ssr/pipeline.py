"""The cached stages before training: self-generation, rewriting, judging, target selection.

Each stage reads and writes the shared caches under ``SSR_CACHE`` (keyed by content), so any
entry point (``ssr-generate``, ``ssr-judge``, ``ssr-train``) runs only what is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ssr.cache import JsonlCache, stage_lock
from ssr.data.prompts import (
    PromptConfig,
    build_messages,
    fit_document,
    generation_prompt,
    prompt_length,
    render_prompt,
)
from ssr.files import atomic_write_text
from ssr.generation import (
    DecodingConfig,
    GenerationStats,
    cached_generate,
    hf_generate,
    load_vllm,
    vllm_generate,
)
from ssr.methods import Candidate, MethodConfig, Selection, SelectionStats, select_targets, selection_stats
from ssr.models import (
    ModelSpec,
    cast_for_autocast_inference,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_path,
)
from ssr.precision import autocast_dtype
from ssr.records import Record, content_hash
from ssr.server_generation import ServerGenerator, check_server_options

log = logging.getLogger(__name__)
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
            check_server_options(self)


@dataclass
class StageCounters:
    """Rows served from cache vs computed, per stage (shown after every run)."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, stage: str, total: int, cached: int, computed: int, seconds: float) -> None:
        self.stages[stage] = {
            "rows": total,
            "cached": cached,
            "computed": computed,
            "seconds": round(seconds, 2),
        }

    def summary(self) -> str:
        return "; ".join(
            f"{k}: {v['cached']}/{v['rows']} cached, {v['computed']} computed in {v['seconds']}s"
            for k, v in self.stages.items()
        )


class BaseModelGenerator:
    """Generates with the *base* model (loaded lazily, once) through the shared generation cache.

    ``backend: openai`` generates through completions servers instead (started lazily, only when
    rows are missing, and stopped by :meth:`release`); use it as a context manager.
    """

    def __init__(self, spec: ModelSpec, cfg: GeneratorConfig, cache_dir: Path) -> None:
        self.spec, self.cfg, self.cache_dir = spec, cfg, Path(cache_dir)
        self.device = "cuda" if _cuda_available() else "cpu"
        self.autocast = autocast_dtype(cfg.precision, self.device) if cfg.backend == "hf" else None
        self._model = None
        self.tokenizer = load_tokenizer(spec)
        self.server: ServerGenerator | None = (
            ServerGenerator(cfg, self.tokenizer, log_dir=self.cache_dir / "servers")
            if cfg.backend == "openai"
            else None
        )

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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
) -> list[Candidate]:
    """Judge each candidate against its record's gold answer, through the verdict cache."""
    import time

    from ssr.judges.base import JudgeItem, run_judge

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
    t0 = time.perf_counter()
    with stage_lock(path.with_suffix(".lock")):
        cache = JsonlCache(path)
        before = len(cache)
        verdicts = run_judge(judge, items, cache, batch_size=getattr(judge, "batch_size", 16))
        computed = len(cache) - before
    counters.add(stage, len(items), len(items) - computed, computed, time.perf_counter() - t0)
    return [
        Candidate(text=c, accept=v.accept, score=v.score, rationale=v.rationale)
        for c, v in zip(candidates, verdicts)
    ]


def generate_candidates(
    generator: BaseModelGenerator,
    records: list[Record],
    prompt_cfg: PromptConfig,
    method: MethodConfig,
    counters: StageCounters,
) -> dict[str, list[str]]:
    """The model-written texts the method needs: own answers and/or rewrites of gold."""
    out: dict[str, list[str]] = {}
    tok = generator.tokenizer
    jobs = []
    budget = generator.cfg.max_prompt_tokens
    if method.needs_self:
        jobs.append(("self", answer_prompts(tok, records, prompt_cfg, budget)))
    if method.needs_rewrite:
        jobs.append(("rewrite", rewrite_prompts(tok, records, prompt_cfg, method, budget)))
    for name, prompts in jobs:
        texts, stats = generator.generate(prompts)
        counters.add(f"generate_{name}", stats.rows, stats.cached, stats.generated, stats.seconds)
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
        hf_texts = generate_candidates(hf, sample, prompt_cfg, method, hf_counters)
    out: dict[str, Any] = {"backend": generator.cfg.backend, "rows": len(idx)}
    for name, hf_rows in hf_texts.items():
        served = judged.get(name)
        if served is None:
            continue
        counters.stages[f"fidelity_hf_{name}"] = hf_counters.stages[f"generate_{name}"]
        hf_judged = judge_candidates(judge, sample, hf_rows, cache_dir, counters, f"fidelity_judge_{name}")
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
) -> tuple[list[Selection], SelectionStats, StageCounters]:
    """Generate (cached) -> judge (cached) -> select; writes selection.jsonl and selection_stats.json."""
    counters = StageCounters()
    own = rewrites = None
    if method.needs_judge:
        if judge is None:
            raise ValueError(f"method={method.name} needs a judge (set judge=rule_qa|hf|openai)")
        if generator is None:
            raise ValueError(f"method={method.name} needs a generator for the base model's own texts")
        with generator:
            texts = generate_candidates(generator, records, prompt_cfg, method, counters)
        if "self" in texts:
            own = judge_candidates(judge, records, texts["self"], cache_dir, counters, "judge_self")
        if "rewrite" in texts:
            rewrites = judge_candidates(
                judge, records, texts["rewrite"], cache_dir, counters, "judge_rewrite"
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
        )
        if fidelity:
            stats.extra["fidelity"] = fidelity
    stats.extra["stages"] = counters.stages
    write_selection(out_dir, selections, stats)
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


def stats_dict(stats: SelectionStats) -> dict[str, Any]:
    return asdict(stats)
