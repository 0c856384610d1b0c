"""lm-eval's own hub task definitions, fed the offline docs: the faithfulness check for ``ssr_*`` tasks.

``hub_task_config("ssr_arc_easy")`` loads ``lm_eval/tasks/arc/arc_easy.yaml`` from the installed
lm-eval (prompt, target, choices, metrics, process_results untouched) and only swaps its dataset
for :mod:`ssr.eval.local_docs`. Running it next to the ``ssr_*`` task on the same docs must give
identical requests and scores.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ssr.eval import local_docs
from ssr.eval.local_docs import MMLU_SUBJECTS

# ssr task -> (hub YAML under lm_eval/tasks, loader, splits the offline data lacks)
_MIRRORS: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "ssr_arc_easy": ("arc/arc_easy.yaml", local_docs.load_arc_easy, ("training_split", "validation_split")),
    "ssr_arc_challenge": (
        "arc/arc_challenge.yaml",
        local_docs.load_arc_challenge,
        ("training_split", "validation_split"),
    ),
    "ssr_piqa": ("piqa/piqa.yaml", local_docs.load_piqa, ("training_split",)),
    "ssr_boolq": ("super_glue/boolq/default.yaml", local_docs.load_boolq, ("training_split",)),
    "ssr_truthfulqa_mc1": ("truthfulqa/truthfulqa_mc1.yaml", local_docs.load_truthfulqa, ()),
    "ssr_truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", local_docs.load_truthfulqa, ()),
    "ssr_gsm8k": ("gsm8k/gsm8k.yaml", local_docs.load_gsm8k, ()),
}
_MIRRORS.update(
    {
        f"ssr_mmlu_{s}": (f"mmlu/default/mmlu_{s}.yaml", partial(local_docs.load_mmlu, subject=s), ())
        for s in MMLU_SUBJECTS
    }
)


def mirrored_tasks() -> list[str]:
    """``ssr_*`` tasks whose hub definition can run on the offline docs (not HellaSwag: see local_docs)."""
    return sorted(_MIRRORS)


def hub_yaml_path(ssr_task: str) -> Path:
    import lm_eval.tasks

    if ssr_task not in _MIRRORS:
        raise KeyError(f"no hub mirror for {ssr_task!r}; known: {mirrored_tasks()}")
    return Path(lm_eval.tasks.__file__).parent / _MIRRORS[ssr_task][0]


def hub_task_config(ssr_task: str, task_name: str | None = None) -> dict[str, Any]:
    """lm-eval's hub task config for ``ssr_task`` with its dataset replaced by the offline docs.

    The returned dict can be passed wherever lm-eval accepts a task (``TaskManager.load``,
    ``simple_evaluate(tasks=[...])``, :func:`ssr.eval.suite.run_suite`). ``task_name`` defaults
    to the hub name (``arc_easy``).
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    _, loader, missing_splits = _MIRRORS[ssr_task]
    cfg = load_yaml(hub_yaml_path(ssr_task), resolve_func=True)
    for key in ("tag", "group", "dataset_path", "dataset_name"):
        cfg.pop(key, None)
    for key in missing_splits:
        cfg[key] = None
    cfg["custom_dataset"] = loader
    if task_name:
        cfg["task"] = task_name
    return cfg
