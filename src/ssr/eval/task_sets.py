"""The held-out grounded-QA sets that the task metrics score: in-domain validation rows + ``data.ood``."""

from __future__ import annotations

from dataclasses import dataclass

from ssr.data.adapters import subsample
from ssr.data.records import Record

ANSWERABLE_SUFFIX = "_answerable"  # an out-of-domain set's answerable rows alone (ood_answerable_only)


@dataclass
class TaskMetricsConfig:
    """Grounded-QA task metrics (mirrors ``eval.tasks`` in ``conf/eval/default.yaml``)."""

    in_domain: bool = True
    max_rows: int | None = 16  # per set (None: all); the main job's size
    ood_max_rows: int | None = None  # per data.ood set (None: max_rows)
    # score only the answerable rows of each data.ood set, as ``ood_<name>_answerable`` (over-refusal:
    # with max_rows and ood_max_rows None, every answerable row; eval.final.tasks sets it)
    ood_answerable_only: bool = False
    seed: int = 0  # which max_rows items: fixed, so every run (and seed) scores the same items
    max_new_tokens: int = 48
    max_prompt_tokens: int | None = None  # None: data.max_length - max_new_tokens
    every_epoch: bool = False
    # in-domain validation rows for choosing the lr (set in_domain_val), drawn from the validation
    # records left after the in_domain test rows: disjoint from them (0: none)
    selection_rows: int = 0


def task_sets(
    tasks: TaskMetricsConfig, val_records: list[Record], ood: dict[str, list[Record]]
) -> dict[str, list[Record]]:
    """The held-out sets the task metrics score: ``in_domain`` (the validation records) and one
    ``ood_<name>`` per ``data.ood`` set (loaded by the recipe: the DataModule's, or ``ssr-eval``'s),
    each cut to the fixed ``max_rows`` (balanced where a set has unanswerable rows). With
    ``ood_answerable_only`` an out-of-domain set keeps its answerable rows alone, named
    ``ood_<name>_answerable``."""
    cap, seed = tasks.max_rows, tasks.seed
    ood_cap = tasks.ood_max_rows or cap
    sets: dict[str, list[Record]] = {}
    if tasks.in_domain and val_records:
        sets["in_domain"] = subsample(val_records, max_rows=cap, seed=seed)
        if tasks.selection_rows:
            taken = {r.id for r in sets["in_domain"]}
            rest = [r for r in val_records if r.id not in taken]
            if len(rest) < tasks.selection_rows:
                raise ValueError(
                    f"eval.tasks.selection_rows={tasks.selection_rows}: only {len(rest)} validation rows are "
                    f"left after the {len(taken)} in_domain test rows (raise data.max_val_rows)"
                )
            balance = any(not r.answerable for r in rest)
            sets["in_domain_val"] = subsample(rest, max_rows=tasks.selection_rows, balance=balance, seed=seed)
    for name, records in ood.items():
        if tasks.ood_answerable_only:
            answerable = [r for r in records if r.answerable]
            sets[f"ood_{name}{ANSWERABLE_SUFFIX}"] = subsample(answerable, max_rows=ood_cap, seed=seed)
            continue
        balance = any(not r.answerable for r in records)
        sets[f"ood_{name}"] = subsample(records, max_rows=ood_cap, balance=balance, seed=seed)
    return sets
