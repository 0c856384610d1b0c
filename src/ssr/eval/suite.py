"""Run an lm-eval task suite on an in-memory model (plain or PEFT-wrapped) and return flat scores."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ssr.runtime.configs import checked_dataclass
from ssr.runtime.distributed import Shard, active_shard
from ssr.runtime.precision import autocast_dtype

LOCAL_TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_PREFIX = "ssr_"
DEFAULT_LIMIT_KEY = "default"

Limits = int | float | Mapping[str, int | float | None] | None
Scores = dict[str, dict[str, float]]


@dataclass
class SuiteConfig:
    """What to evaluate (mirrors ``conf/eval/suite/*.yaml``).

    ``limits``: one number for every task, or a mapping from task/group name (or ``default``) to a
    number of docs per leaf task; ``None`` means all docs. Fractions below 1 mean a share of docs.
    """

    name: str = "none"
    tasks: list[str] = field(default_factory=list)
    limits: Limits = None
    num_fewshot: int | None = None
    batch_size: int = 16
    apply_chat_template: bool = False
    max_length: int | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> SuiteConfig:
        """From a config mapping (``conf/eval/suite/*.yaml``); an unknown key is an error."""
        return checked_dataclass(cls, cfg, "eval suite")


@lru_cache(maxsize=2)
def task_manager(include_defaults: bool, data_root: str | None = None) -> Any:
    """lm-eval TaskManager over the packaged ``ssr_*`` tasks (+ lm-eval's own when asked).

    Indexing lm-eval's ~15k hub YAMLs takes seconds, so the hub index is only built when a suite
    names a non-``ssr_`` task, and each manager is built once per process.
    """
    from lm_eval.tasks import TaskManager

    metadata = {"data_root": data_root} if data_root else None
    return TaskManager(
        include_path=str(LOCAL_TASKS_DIR), include_defaults=include_defaults, metadata=metadata
    )


_BUILT: dict[tuple[int, str], list[Any]] = {}


def loaded_tasks(manager: Any, tasks: list[str | dict[str, Any]]) -> list[Any]:
    """lm-eval Task/Group objects for ``tasks``, built once per process and manager.

    Building a task reads and formats its whole dataset (~5 s for the ``local`` suite, paid twice
    per evaluation before: once here for the doc counts and once inside ``simple_evaluate``); the
    drift callback evaluates the same suite at fit start and after every epoch. Evaluation state
    (requests, responses) is rebuilt by lm-eval on every call; tested equal to a fresh build.
    """
    import json

    if not all(isinstance(t, str) for t in tasks):
        return list(tasks)  # inline configs: built by lm-eval itself
    key = (id(manager), json.dumps(sorted(tasks)))
    if key not in _BUILT:
        loaded = manager.load(list(tasks))
        top = {**loaded.get("groups", {}), **loaded["tasks"]}
        _BUILT[key] = [top[name] for name in tasks]
    return _BUILT[key]


def needs_hub_tasks(tasks: list[str | dict[str, Any]]) -> bool:
    """Whether a task name is not one of ours (inline dict configs need no index)."""
    return any(isinstance(t, str) and not t.startswith(LOCAL_PREFIX) for t in tasks)


def limit_for(leaf: str, parents: dict[str, list[str]], limits: Limits) -> int | float | None:
    if limits is None or isinstance(limits, int | float):
        return limits
    seen = [leaf]
    while seen:
        name = seen.pop(0)
        if name in limits:
            return limits[name]
        seen.extend(parents.get(name, []))
    return limits.get(DEFAULT_LIMIT_KEY)


def sample_indices(loaded: Mapping[str, Any], limits: Limits) -> dict[str, list[int]]:
    """Per-leaf-task doc indices (the first n docs) for lm-eval's ``samples`` argument."""
    parents: dict[str, list[str]] = {}
    for group, children in loaded.get("group_map", {}).items():
        for child in children:
            parents.setdefault(child, []).append(group)
    out: dict[str, list[int]] = {}
    for name, task in loaded["tasks"].items():
        n_docs = len(task.eval_docs)
        limit = limit_for(name, parents, limits)
        if limit is not None and limit <= 0:
            raise ValueError(f"limit for task {name!r} must be positive, got {limit}")
        if limit is None:
            n = n_docs
        elif limit < 1:
            n = math.ceil(n_docs * limit)
        else:
            n = min(int(limit), n_docs)
        out[name] = list(range(n))
    return out


def sample_counts(
    tasks: list[str | dict[str, Any]], limits: Limits = None, data_root: str | None = None
) -> dict[str, int]:
    """How many docs each leaf task of ``tasks`` evaluates under ``limits`` (for reports)."""
    with quiet_lm_eval():
        loaded = task_manager(needs_hub_tasks(tasks), data_root).load(list(tasks))
    return {name: len(idx) for name, idx in sample_indices(loaded, limits).items()}


def flatten_results(results: Mapping[str, Any]) -> Scores:
    """lm-eval's ``{"task": {"acc,none": x, "acc_stderr,none": ...}}`` -> ``{"task": {"acc": x}}``.

    Filters other than ``none`` become suffixes (``exact_match_strict-match``); stderr entries and
    non-numeric values are dropped.
    """
    scores: Scores = {}
    for task, metrics in results["results"].items():
        row: dict[str, float] = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or isinstance(value, str | bool) or value is None:
                continue
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else f"{metric}_{filter_name}"
            row[name] = float(value)
        if row:
            scores[task] = row
    return scores


# lm-eval modules whose per-task tqdm bars (one per task and subtask) are silenced
TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def _one_bar_tqdm(original: Any) -> Any:
    """lm-eval's ``tqdm`` with every bar off except the request runs ("Running ... requests")."""

    def tqdm(*args: Any, **kwargs: Any) -> Any:
        if not str(kwargs.get("desc", "")).startswith("Running"):
            kwargs["disable"] = True
        return original(*args, **kwargs)

    return tqdm


@contextlib.contextmanager
def without_env_info() -> Iterator[None]:
    """Skip lm-eval's ``add_env_info`` (it runs torch's ``collect_env`` subprocesses, ~0.4 s per
    evaluation, for metadata that ssr does not keep)."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        evaluator.add_env_info = original


@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """Silence lm-eval's per-task chatter: its warnings, and the per-task "building requests" bars
    (~60 per evaluation of the local suite), leaving one bar per request type."""
    import importlib

    logger = logging.getLogger("lm_eval")
    old = logger.level
    logger.setLevel(level)
    modules = [importlib.import_module(name) for name in TQDM_MODULES]
    originals = [getattr(m, "tqdm", None) for m in modules]
    for module, original in zip(modules, originals):
        if original is not None:
            module.tqdm = _one_bar_tqdm(original)
    try:
        yield
    finally:
        logger.setLevel(old)
        for module, original in zip(modules, originals):
            if original is not None:
                module.tqdm = original


def run_suite(
    model: Any,
    tokenizer: Any,
    tasks: list[str | dict[str, Any]],
    limits: Limits = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    bootstrap_iters: int = 0,
    mixed_precision: str | torch.dtype | None = None,
    apply_chat_template: bool = False,
    max_length: int | None = None,
    data_root: str | Path | None = None,
    quiet: bool = True,
    on_samples: Callable[[str, list[dict[str, Any]]], None] | None = None,
) -> Scores:
    """Evaluate ``model`` on lm-eval ``tasks`` and return ``{task_or_group: {metric: value}}``.

    ``tasks`` are task/group names (``ssr_*`` are found in the packaged YAMLs, others in lm-eval's
    index) or inline task config dicts (see :mod:`ssr.eval.hub_mirror`).

    ``model`` is a Hugging Face causal LM or a PEFT wrapper around one; ``tokenizer`` is passed
    explicitly. ``mixed_precision`` sets HFLM's autocast dtype (``bf16``); note that HFLM's own
    ``torch.autocast(enabled=False)`` would override an outer autocast, so it must be set here.
    HFLM switches the model to eval mode; callers that train restore it themselves.
    ``on_samples(task, samples)`` gets lm-eval's logged per-document samples of every leaf task
    (``log_samples``), in document order; they are dropped once it returns.

    In a sharded evaluation (:mod:`ssr.runtime.distributed`) lm-eval splits the documents itself:
    the LM object gets the rank and world size (:func:`share_documents`), every task builds the
    requests of its documents ``rank, rank + world_size, ...``, lm-eval pads the request lists to
    equal length and gathers the per-document metrics and samples on rank 0, whose scores every
    rank gets back; ``on_samples`` runs on rank 0. Tasks with fewer documents than ranks run on
    rank 0 alone (:func:`shared_runs`); in lockstep (ZeRO-3) every rank runs every document.
    """
    if not tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from ssr.eval.shared_context import SharedContextHFLM, supports_shared_context

    manager = task_manager(needs_hub_tasks(tasks), str(data_root) if data_root else None)
    shard = active_shard()
    scores: Scores = {}
    with quiet_lm_eval() if quiet else contextlib.nullcontext(), without_env_info():
        built = loaded_tasks(manager, tasks)
        loaded = manager.load(built)
        samples = sample_indices(loaded, limits)
        lm_class = SharedContextHFLM if supports_shared_context(model) else HFLM
        lm = lm_class(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            mixed_precision_dtype=autocast_dtype(mixed_precision),
            max_length=max_length,
        )
        log_samples = shard.broadcast(on_samples is not None)
        for picked, split in shared_runs(tasks, loaded.get("group_map", {}), samples, shard):
            if not split and shard.split and not shard.is_main:
                continue  # rank 0 runs the tasks too small to split; the others have their scores
            share_documents(lm, shard if split else None)
            results = simple_evaluate(
                model=lm,
                tasks=[built[i] for i in picked],
                num_fewshot=num_fewshot,
                samples=samples,
                bootstrap_iters=bootstrap_iters,
                log_samples=log_samples,
                apply_chat_template=apply_chat_template,
                task_manager=manager,
            )
            if results is None:  # a rank other than 0 of a split run: rank 0 has the results
                continue
            if on_samples is not None:  # in document order (a split run gathers them rank by rank)
                for task, logged in (results.pop("samples", None) or {}).items():
                    on_samples(task, sorted(logged, key=lambda sample: sample["doc_id"]))
            scores.update(flatten_results(results))
    return shard.broadcast(scores)


def leaf_tasks(name: str, group_map: Mapping[str, list[str]]) -> list[str]:
    """The leaf tasks under a task or group name."""
    children = group_map.get(name)
    return (
        [name] if children is None else [leaf for child in children for leaf in leaf_tasks(child, group_map)]
    )


def shared_runs(
    tasks: list[str | dict[str, Any]],
    group_map: Mapping[str, list[str]],
    samples: Mapping[str, list[int]],
    shard: Shard,
) -> list[tuple[list[int], bool]]:
    """The suite as lm-eval runs (indices into ``tasks``, whether its documents are split across the
    ranks): one split run of the tasks and groups whose every leaf has a document for each rank
    (lm-eval needs one per rank), one run of the rest. A single run, unsplit, outside a shard and
    in lockstep."""
    if shard.parts == 1:
        return [(list(range(len(tasks))), False)]
    splits = [
        isinstance(task, str)
        and all(len(samples.get(leaf, [])) >= shard.parts for leaf in leaf_tasks(task, group_map))
        for task in tasks
    ]
    runs = [
        ([i for i, s in enumerate(splits) if s], True),
        ([i for i, s in enumerate(splits) if not s], False),
    ]
    return [(picked, split) for picked, split in runs if picked]


class RankGroup:
    """The calls lm-eval's HFLM makes on its ``accelerator`` (``gather``, ``wait_for_everyone``,
    ``unwrap_model``) over the ``torch.distributed`` group the run already has (gloo or nccl)
    instead of an ``accelerate`` launch. Counts the requests each rank runs (lm-eval gathers them
    to pad)."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        part = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(part) for _ in range(self.shard.world_size)]
        torch.distributed.all_gather(parts, part.contiguous())
        out = torch.cat(parts)
        if tensor.dim() == 0:  # lm-eval gathers each task's request count on this rank
            self.shard.add_counts("lm_eval", out.tolist())
        return out

    def wait_for_everyone(self) -> None:
        torch.distributed.barrier()

    def unwrap_model(self, model: Any) -> Any:
        return model  # HFLM.model: the model as given


def share_documents(lm: Any, shard: Shard | None) -> None:
    """Give ``lm`` (HFLM) the shard's rank and world size, lm-eval's own data-parallel switch
    (``None``: a run of one process)."""
    if shard is None:
        lm._rank, lm._world_size = 0, 1
        return
    lm._rank, lm._world_size, lm.accelerator = shard.rank, shard.world_size, RankGroup(shard)
