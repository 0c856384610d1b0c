"""Self-drift: a data-free drift signal.

The base model answers a fixed set of general instructions once (greedy, chat template); any
later model is scored by its mean per-token NLL on those answers (response tokens only). A model
that drifts away from its own general behaviour assigns its former answers a higher NLL. The
answers are the *reference*; it is cached under ``SSR_CACHE/self_drift`` keyed by the weights'
fingerprint and the settings, and can be saved next to a run.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ssr.eval.token_nll import RowScore, row_scores
from ssr.generation.config import DecodingConfig
from ssr.generation.hf import generate_ids
from ssr.models.logits import pad_token_id
from ssr.runtime.configs import checked_dataclass
from ssr.runtime.distributed import active_shard, gathered
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root
from ssr.runtime.precision import autocast_dtype

PROMPTS_FILE = Path(__file__).parent / "data" / "self_drift_prompts.jsonl"
REFERENCE_VERSION = 1
SELF_DRIFT_SOURCE = "self_drift"


@dataclass
class SelfDriftConfig:
    """Settings (mirrors ``eval.self_drift`` in ``conf/eval/default.yaml``)."""

    enabled: bool = True
    prompts_file: str | None = None  # JSONL with a "prompt" field; None = the packaged set
    limit: int | None = 16  # use only the first n prompts (None: all 48); the main job's size
    max_new_tokens: int = 48
    batch_size: int = 16
    reference_path: str | None = None  # a saved reference (e.g. a run's self_drift_reference.json)
    cache: bool = True  # cache the base answers under SSR_CACHE/self_drift

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> SelfDriftConfig:
        """From a config mapping (``eval.self_drift``); an unknown key is an error."""
        return checked_dataclass(cls, cfg, "self_drift")


@dataclass
class SelfDriftReference:
    """The base model's answers and its own NLL on them."""

    prompts: list[str]
    answers: list[str]
    stop_ids: list[int | None]  # token that ended each answer (None: cut at max_new_tokens)
    base_nll: float
    n_tokens: int
    fingerprint: str
    settings: dict[str, Any]
    version: int = REFERENCE_VERSION

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(asdict(self), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> SelfDriftReference:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            ref = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a self-drift reference ({err})") from err
        if ref.version != REFERENCE_VERSION or not len(ref.prompts) == len(ref.answers) == len(ref.stop_ids):
            raise ValueError(f"{path}: reference version {ref.version} or lengths do not match")
        return ref


def load_prompts(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    path = Path(path) if path else PROMPTS_FILE
    prompts = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'prompt' ({err})") from err
            prompts.append(str(prompt))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


# --- tokenization ---------------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Chat-template tokens of a single user turn plus the assistant header."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: Any, answer: str, stop_id: int | None) -> list[int]:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [*ids, stop_id] if stop_id is not None else ids


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# --- generation and scoring -----------------------------------------------------------------------


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    mixed_precision: str | torch.dtype | None = None,
    engine: str = "auto",
    source: str = SELF_DRIFT_SOURCE,
) -> tuple[list[str], list[int | None]]:
    """Greedy answers (``ssr.generation.hf.generate_ids``, ``engine``: see
    :mod:`ssr.generation.engine`) and the token that ended each; in a sharded evaluation each rank
    generates its share of the batches (counted as ``source``)."""
    stops = _stop_token_ids(model, tokenizer)
    kwargs = {
        **DecodingConfig(max_new_tokens=max_new_tokens).hf_kwargs(),
        "eos_token_id": sorted(stops) or None,
    }
    new_ids = active_shard().map(
        [prompt_ids(tokenizer, p) for p in prompts],
        lambda part: generate_ids(
            model,
            part,
            pad_token_id(tokenizer),
            kwargs,
            batch_size,
            autocast_dtype=autocast_dtype(mixed_precision),
            engine=engine,
        ),
        source=source,
        batch_size=batch_size,
        length=len,
    )
    answers: list[str] = []
    stop_ids: list[int | None] = []
    for new in new_ids:
        cut = next((k for k, tok in enumerate(new) if tok in stops), None)
        stop_ids.append(new[cut] if cut is not None else None)
        answers.append(tokenizer.decode(new[:cut] if cut is not None else new, skip_special_tokens=True))
    return answers, stop_ids


def response_rows(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], stop_ids: Sequence[int | None]
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per answer: chat-template prompt masked, response tokens scored."""
    rows = []
    for prompt, answer, stop in zip(prompts, answers, stop_ids, strict=True):
        p, r = prompt_ids(tokenizer, prompt), response_ids(tokenizer, answer, stop)
        rows.append((p + r, [-100] * len(p) + r))
    return rows


def response_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    stop_ids: Sequence[int | None],
    batch_size: int = 16,
    mixed_precision: str | torch.dtype | None = None,
) -> tuple[float, int]:
    """Summed NLL and count of the response tokens (chat template, prompt tokens masked)."""
    per_row = response_row_scores(model, tokenizer, prompts, answers, stop_ids, batch_size, mixed_precision)
    return sum(r.nll for r in per_row), sum(r.n_tokens for r in per_row)


def response_row_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    stop_ids: Sequence[int | None],
    batch_size: int = 16,
    mixed_precision: str | torch.dtype | None = None,
    end_of_turn: Collection[int] = (),
) -> list[RowScore]:
    """Per prompt: :class:`~ssr.eval.token_nll.RowScore` of its response (the end-of-turn
    measures with ``end_of_turn``, the stop token ids)."""
    rows = response_rows(tokenizer, prompts, answers, stop_ids)
    dtype = autocast_dtype(mixed_precision)
    return row_scores(
        model, rows, pad_token_id(tokenizer), batch_size, dtype, end_of_turn, source=SELF_DRIFT_SOURCE
    )


# --- reference (base answers) ---------------------------------------------------------------------


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def weights_fingerprint(model: Any) -> str:
    """Identity of the base weights (PEFT adapter weights excluded, ``base_layer`` names unwrapped;
    ZeRO-3 partitioned weights gathered one at a time, on every rank)."""
    base = model.get_base_model() if is_peft(model) else model
    parts = []
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "lora_" in name:
                continue
            with gathered([param]):
                t = param.detach().double()
                parts.append(
                    (
                        name.replace(".base_layer", ""),
                        list(param.shape),
                        str(param.dtype),
                        f"{t.sum().item():.10e}",
                        f"{t.square().sum().item():.10e}",
                    )
                )
    return content_hash(type(base).__name__, parts)


@contextlib.contextmanager
def base_weights(model: Any) -> Iterator[None]:
    """Run a PEFT model with its adapters disabled (the base model); no-op for plain models."""
    with model.disable_adapter() if is_peft(model) else contextlib.nullcontext():
        yield


def build_reference(
    model: Any,
    tokenizer: Any,
    cfg: SelfDriftConfig,
    mixed_precision: str | torch.dtype | None = None,
) -> SelfDriftReference:
    """The base model's answers (from ``reference_path``, the cache, or generated now).

    For a PEFT model the adapters are disabled, so the reference is always the base model's.
    """
    if cfg.reference_path:
        return SelfDriftReference.load(cfg.reference_path)
    prompts = load_prompts(cfg.prompts_file, cfg.limit)
    settings = {
        "max_new_tokens": cfg.max_new_tokens,
        "mixed_precision": str(autocast_dtype(mixed_precision)),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "prompts_hash": content_hash(prompts),
    }
    fingerprint = weights_fingerprint(model)
    cache_file = cache_root() / "self_drift" / f"{content_hash(fingerprint, settings)}.json"
    shard = active_shard()
    cached = shard.main_decides(lambda: _cached_reference(cache_file) if cfg.cache else None)
    if cached is not None:
        return cached
    with base_weights(model):
        answers, stop_ids = generate_answers(
            model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, mixed_precision
        )
        total, count = response_nll(
            model, tokenizer, prompts, answers, stop_ids, cfg.batch_size, mixed_precision
        )
    ref = SelfDriftReference(
        prompts=prompts,
        answers=answers,
        stop_ids=stop_ids,
        base_nll=total / max(count, 1),
        n_tokens=count,
        fingerprint=fingerprint,
        settings={k: v for k, v in settings.items() if k != "chat_template"},
    )
    if cfg.cache and shard.is_main:
        ref.save(cache_file)
    return ref


def _cached_reference(path: Path) -> SelfDriftReference | None:
    with contextlib.suppress(ValueError):
        return SelfDriftReference.load(path) if path.is_file() else None
    return None


def self_drift_scores(
    model: Any,
    tokenizer: Any,
    reference: SelfDriftReference,
    batch_size: int = 16,
    mixed_precision: str | torch.dtype | None = None,
    items: Any = None,
) -> dict[str, float]:
    """``nll`` of ``model`` on the reference answers and its increase over the base model's, and
    where the model would end them (same forward pass, :class:`~ssr.eval.token_nll.RowScore`):
    ``stop_prob`` (mean end-of-turn probability inside the answers), ``survival`` (mean probability
    of reaching an answer's end without stopping), ``end_prob`` (mean end-of-turn probability where
    the base ended).

    ``items`` (an :class:`ssr.eval.items.ItemSink`) also gets each prompt's values (source ``self_drift``).
    """
    per_row = response_row_scores(
        model,
        tokenizer,
        reference.prompts,
        reference.answers,
        reference.stop_ids,
        batch_size,
        mixed_precision,
        _stop_token_ids(model, tokenizer),
    )
    item_rows = self_drift_item_rows(reference.prompts, per_row)
    if items is not None:
        items.write(SELF_DRIFT_SOURCE, item_rows)
    total, count = sum(r.nll for r in per_row), sum(r.n_tokens for r in per_row)
    nll = total / max(count, 1)
    return {
        "nll": nll,
        "nll_increase": nll - reference.base_nll,
        "nll_increase_rel": (nll - reference.base_nll) / reference.base_nll
        if reference.base_nll
        else float("nan"),
        **{key: _finite_mean([r[key] for r in item_rows]) for key in END_OF_TURN_KEYS},
    }


END_OF_TURN_KEYS = ("stop_prob", "survival", "end_prob")


def _finite_mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def self_drift_item_rows(prompts: Sequence[str], per_row: Sequence[RowScore]) -> list[dict[str, Any]]:
    """One item per prompt, keyed by the prompt's hash: mean NLL per token, summed NLL, tokens, and
    the end-of-turn measures."""
    return [
        {
            "id": content_hash(p)[:16],
            "nll": r.nll / max(r.n_tokens, 1),
            "nll_sum": r.nll,
            "n_tokens": r.n_tokens,
            "stop_prob": r.stop_prob,
            "survival": math.exp(r.log_survival),
            "end_prob": r.end_prob,
        }
        for p, r in zip(prompts, per_row, strict=True)
    ]
