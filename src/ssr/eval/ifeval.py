"""IFEval in every evaluation: instruction following of generated replies, scored officially.

The prompts and the scoring are the packaged lm-eval task ``ssr_ifeval`` (``tasks/ssr_ifeval.yaml``:
the 541 prompts under ``$SSR_DATA_ROOT/ifeval``, lm-eval's own IFEval checkers via
:mod:`ssr.eval.ifeval_checks`); the replies come from the project's generation path
(:func:`ssr.eval.self_drift.generate_answers`: chat template, greedy, stopped at the end of turn),
not from lm-eval's ``generate_until``. Each evaluation reports the four official metrics, the
replies' length and end-of-turn rate, and refusals (:mod:`ssr.eval.refusal`) and their leak vs
the base model's replies to the same prompts. The base's replies are generated once per weights and
settings and cached (``SSR_CACHE/ifeval``); per prompt, an item row (source ``ifeval``) keeps the
four results, the flags and the reply.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssr.eval.items import ItemSink
from ssr.eval.refusal import leaked, refusal_flags, share
from ssr.eval.self_drift import base_weights, generate_answers, weights_fingerprint
from ssr.eval.suite import loaded_tasks, quiet_lm_eval, task_manager
from ssr.runtime.configs import checked_dataclass
from ssr.runtime.distributed import active_shard
from ssr.runtime.files import atomic_write_text
from ssr.runtime.hashing import content_hash
from ssr.runtime.paths import cache_root

IFEVAL_TASK = "ssr_ifeval"
IFEVAL_KEY = "ifeval"  # scores key and item source
METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)
PROMPT_METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc")
REFERENCE_VERSION = 1


@dataclass
class IFEvalConfig:
    """Settings (mirrors ``eval.ifeval`` in ``conf/eval/default.yaml``)."""

    enabled: bool = True
    limit: int | None = 8  # prompts: a fixed random sample of this many (None: all 541)
    sample_seed: int = 0  # which sample: the same prompts for every run
    max_gen_toks: int = 128  # the published setting is 1280
    batch_size: int = 16
    cache: bool = True  # the base's replies cached under SSR_CACHE/ifeval

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> IFEvalConfig:
        return checked_dataclass(cls, cfg, "eval.ifeval")


@dataclass
class Replies:
    """Generated replies by prompt id (the IFEval ``key``)."""

    texts: dict[str, str]
    ended: dict[str, bool]  # the reply ended with an end-of-turn token (not cut at max_gen_toks)
    n_tokens: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = REFERENCE_VERSION


def ifeval_task(data_root: str | None) -> Any:
    """The packaged lm-eval task (built once per process, like the suite's)."""
    with quiet_lm_eval():
        return loaded_tasks(task_manager(False, data_root), [IFEVAL_TASK])[0]


def sample(docs: Sequence[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """``limit`` docs drawn with ``seed`` (kept in file order), or all of them."""
    if limit is not None and limit <= 0:
        raise ValueError(f"eval.ifeval.limit must be positive or null, got {limit}")
    if limit is None or limit >= len(docs):
        return list(docs)
    return [docs[i] for i in sorted(random.Random(seed).sample(range(len(docs)), limit))]


def doc_id(doc: Mapping[str, Any]) -> str:
    return str(doc["key"])


def generate_replies(
    model: Any, tokenizer: Any, task: Any, docs: Sequence[dict[str, Any]], cfg: IFEvalConfig, dtype: Any
) -> Replies:
    """Greedy replies to the task's prompts (its ``doc_to_text`` as the user turn)."""
    prompts = [task.doc_to_text(doc) for doc in docs]
    texts, stops = generate_answers(
        model, tokenizer, prompts, cfg.max_gen_toks, cfg.batch_size, dtype, source=IFEVAL_KEY
    )
    ids = [doc_id(d) for d in docs]
    return Replies(
        texts=dict(zip(ids, texts, strict=True)),
        ended={i: s is not None for i, s in zip(ids, stops, strict=True)},
        n_tokens={i: len(tokenizer(t, add_special_tokens=False)["input_ids"]) for i, t in zip(ids, texts)},
    )


def score_rows(task: Any, docs: Sequence[dict[str, Any]], texts: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per prompt: the task's ``process_results`` (the four metrics; inst-level as lists)."""
    rows = []
    for doc in docs:
        result = task.process_results(doc, [texts[doc_id(doc)]])
        missing = [m for m in METRICS if m not in result]
        if missing:
            raise KeyError(f"{IFEVAL_TASK} process_results gave no {missing} for key {doc_id(doc)}")
        row = {"id": doc_id(doc), **{m: result[m] for m in METRICS}}
        for m in PROMPT_METRICS:
            row[m] = float(row[m])
        rows.append(row)
    return rows


def aggregate(task: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The four metrics with the task's own aggregations (mean; instruction-level: over all
    instructions)."""
    agg = task.aggregation()
    return {m: float(agg[m]([r[m] for r in rows])) for m in METRICS}


class IFEval:
    """IFEval of one evaluator: its prompts, the base's replies (cached) and the scores."""

    def __init__(self, cfg: IFEvalConfig, data_root: str | None, unanswerable_sentence: str) -> None:
        self.cfg, self.data_root, self.sentence = cfg, data_root, unanswerable_sentence
        self.reference: Replies | None = None
        self._docs: list[dict[str, Any]] | None = None

    @property
    def task(self) -> Any:
        return ifeval_task(self.data_root)

    @property
    def docs(self) -> list[dict[str, Any]]:
        if self._docs is None:
            self._docs = sample(list(self.task.eval_docs), self.cfg.limit, self.cfg.sample_seed)
        return self._docs

    def key(self) -> dict[str, Any]:
        """What decides the scores besides the weights (part of the base evaluation's cache key)."""
        return {**asdict(self.cfg), "batch_size": None, "cache": None, "docs": content_hash(self.docs)}

    def ensure_reference(self, model: Any, tokenizer: Any, dtype: torch.dtype | None) -> Replies:
        """The base model's replies (adapters disabled), from the cache or generated once."""
        if self.reference is not None:
            return self.reference
        settings = {
            **self.key(),
            "dtype": str(dtype),
            "chat_template": content_hash(getattr(tokenizer, "chat_template", None)),
        }
        path = cache_root() / "ifeval" / f"{content_hash(weights_fingerprint(model), settings)}.json"
        shard = active_shard()
        cached = shard.main_decides(lambda: _cached_replies(path) if self.cfg.cache else None)
        if cached is not None:
            self.reference = cached
            return cached
        with base_weights(model):
            replies = generate_replies(model, tokenizer, self.task, self.docs, self.cfg, dtype)
        replies.settings = settings
        if self.cfg.cache and shard.is_main:
            atomic_write_text(path, json.dumps(asdict(replies), ensure_ascii=False))
        self.reference = replies
        return replies

    def scores(
        self,
        model: Any,
        tokenizer: Any,
        dtype: torch.dtype | None,
        items: ItemSink | None = None,
        base: bool = False,
    ) -> dict[str, float]:
        """The four metrics, refusals, their leak vs the base, reply length and end-of-turn rate;
        ``base``: the model is the base (its cached replies are scored, nothing is generated)."""
        reference = self.ensure_reference(model, tokenizer, dtype)
        if base:
            replies = reference
        else:
            replies = generate_replies(model, tokenizer, self.task, self.docs, self.cfg, dtype)
        rows = reply_rows(self.task, self.docs, replies, reference, self.sentence)
        if items is not None:
            items.write(IFEVAL_KEY, rows)
        return summary(self.task, rows, reference)


def _cached_replies(path: Path) -> Replies | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Replies(**json.loads(path.read_text(encoding="utf-8")))
    return None


def reply_rows(
    task: Any, docs: Sequence[dict[str, Any]], replies: Replies, reference: Replies, sentence: str
) -> list[dict[str, Any]]:
    """Per prompt: the four metrics, refusal flags, leak vs the base, length, end of turn, reply."""
    base_refused = {i: refusal_flags(t, sentence)["refused"] for i, t in reference.texts.items()}
    rows = score_rows(task, docs, replies.texts)
    for row in rows:
        i = row["id"]
        text = replies.texts[i]
        row.update(refusal_flags(text, sentence))
        row["leak"] = leaked({i: row["refused"]}, base_refused).get(i, float("nan"))
        row.update(
            n_tokens=replies.n_tokens[i], n_chars=len(text), ended=float(replies.ended[i]), response=text
        )
    return rows


def summary(task: Any, rows: Sequence[Mapping[str, Any]], reference: Replies) -> dict[str, float]:
    """Scores of one evaluation from its item rows."""
    ids = [r["id"] for r in rows]
    tokens = share([r["n_tokens"] for r in rows])
    base_tokens = share([reference.n_tokens[i] for i in ids if i in reference.n_tokens])
    return {
        **aggregate(task, rows),
        "refusal": share([r["refused"] for r in rows]),
        "task_sentence": share([r["task_sentence"] for r in rows]),
        "refusal_leak": share([r["leak"] for r in rows if r["leak"] == r["leak"]]),
        "mean_tokens": tokens,
        "mean_chars": share([r["n_chars"] for r in rows]),
        "length_ratio": tokens / base_tokens if base_tokens else float("nan"),
        "ended": share([r["ended"] for r in rows]),
        "n": float(len(rows)),
    }


def load_replies(path: str | Path) -> Replies:
    return Replies(**json.loads(Path(path).read_text(encoding="utf-8")))
