"""The held-out grounded-QA sets that the task metrics score: in-domain validation rows + ``data.ood``."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig

from ssr.data.adapters import subsample
from ssr.data.records import Record
from ssr.runtime.configs import checked_dataclass


@dataclass
class TaskMetricsConfig:
    """Grounded-QA task metrics (mirrors ``eval.tasks`` in ``conf/eval/default.yaml``)."""

    in_domain: bool = True
    max_rows: int | None = 16  # per set (None: all); the main job's size
    ood_max_rows: int | None = None  # per data.ood set (None: max_rows)
    seed: int = 0  # which max_rows items: fixed, so every run (and seed) scores the same items
    max_new_tokens: int = 48
    max_prompt_tokens: int | None = None  # None: data.max_length - max_new_tokens
    every_epoch: bool = False


def task_sets(
    cfg: DictConfig, val_records: list[Record], ood: dict[str, list[Record]] | None = None
) -> dict[str, list[Record]]:
    """Held-out grounded-QA sets scored before and after training: in-domain val + the ``data.ood``
    sets (``ood``: already loaded, e.g. by the DataModule; else loaded here)."""
    tasks = checked_dataclass(TaskMetricsConfig, cfg.eval.tasks, "eval.tasks")
    cap, seed = tasks.max_rows, tasks.seed
    ood_cap = tasks.ood_max_rows or cap
    sets = (
        {"in_domain": subsample(val_records, max_rows=cap, seed=seed)}
        if tasks.in_domain and val_records
        else {}
    )
    if ood is None:
        ood = {str(name): instantiate(node) for name, node in cfg.data.ood.items()}
    for name, records in ood.items():
        balance = any(not r.answerable for r in records)
        sets[f"ood_{name}"] = subsample(records, max_rows=ood_cap, balance=balance, seed=seed)
    return sets
