"""Per-item results of every evaluation, written as each source finishes, read back keyed by id.

Layout: ``<run>/eval_items/<tag>/<source>.jsonl``, one JSON object per item with an ``id``:

- tags: ``base``, ``epoch_<n>`` (the last epoch is the final model); with ``eval.final``,
  ``final_base`` and ``final`` (the base and the final model at the larger final settings);
- sources: ``lm_eval.<task>`` (per document: each metric's 0/1 or value, per-choice
  log-likelihoods ``ll`` for multiple-choice tasks, ``doc_hash``), ``tasks.<set>`` (per grounded-QA
  row: prediction and its scores), ``self_drift`` (per prompt NLL), ``kl_task`` (per training
  prompt: log pi0 - log pi of the base model's own answer).

Two runs are paired on the ids both have (:func:`paired_values`), so a statistic compares the
same items.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssr.runtime.files import atomic_write_text

ITEMS_DIR = "eval_items"
LM_EVAL_PREFIX = "lm_eval."
TASKS_PREFIX = "tasks."

FINAL_BASE_TAG = "final_base"
FINAL_TAG = "final"

Items = dict[str, dict[str, Any]]  # id -> row


def epoch_tag(epoch: int) -> str:
    return f"epoch_{epoch}"


def step_tag(step: int) -> str:
    """An evaluation every n optimizer steps (``eval.callback.every_n_steps``)."""
    return f"step_{step}"


class ItemSink:
    """Writes the item files of one evaluation (one ``tag``) under ``root``."""

    def __init__(self, root: str | Path, tag: str) -> None:
        self.dir = Path(root) / tag

    def write(self, source: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """``<dir>/<source>.jsonl`` (replaced whole, atomically); every row needs an ``id``."""
        lines = []
        for n, row in enumerate(rows):
            if "id" not in row:
                raise ValueError(f"item {n} of {source!r} has no 'id' (keys: {sorted(row)})")
            lines.append(json.dumps({**row, "id": str(row["id"])}, ensure_ascii=False, default=_plain))
        return atomic_write_text(self.dir / f"{source}.jsonl", "".join(f"{line}\n" for line in lines))

    def copy_from(self, other: str | Path) -> None:
        """Replace this sink's files by those of another item directory (a cached base evaluation)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        shutil.copytree(other, self.dir)

    def copy_to(self, other: str | Path) -> None:
        other = Path(other)
        self.dir.mkdir(parents=True, exist_ok=True)
        if other.exists():
            shutil.rmtree(other)
        shutil.copytree(self.dir, other)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


# --- lm-eval samples -> compact rows --------------------------------------------------------------


def lm_eval_rows(samples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's logged samples of one task -> one compact row per document.

    Keeps each metric's per-document value (suffixed with the filter unless it is ``none``), the
    document hash (to check that two runs saw the same document) and, for log-likelihood
    requests, each choice's log-likelihood (``ll``); the document text is dropped.
    """
    rows: dict[str, dict[str, Any]] = {}
    for sample in samples:
        doc_id = str(sample["doc_id"])
        row = rows.setdefault(doc_id, {"id": doc_id, "doc_hash": sample.get("doc_hash")})
        suffix = "" if sample.get("filter", "none") == "none" else f"_{sample['filter']}"
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if isinstance(value, bool | int | float):
                row[f"{metric}{suffix}"] = float(value)
        lls = [_loglikelihood(r) for r in sample.get("filtered_resps", [])]
        if lls and all(ll is not None for ll in lls) and "ll" not in row:
            row["ll"] = [round(ll, 5) for ll in lls]
    return list(rows.values())


def _loglikelihood(resp: Any) -> float | None:
    """The log-likelihood of a ``loglikelihood`` response (``(ll, is_greedy)``), else ``None``."""
    if isinstance(resp, list | tuple) and len(resp) == 2 and isinstance(resp[0], int | float):
        return float(resp[0])
    return None


# --- reading --------------------------------------------------------------------------------------


def read_source(path: str | Path) -> Items:
    """One item file -> ``{id: row}``; a bad line is an error naming the file and line."""
    path = Path(path)
    items: Items = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items[str(row["id"])] = row
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: not an item row with an 'id' ({err})") from err
    return items


def load_items(run_dir: str | Path) -> dict[str, dict[str, Items]]:
    """``{tag: {source: {id: row}}}`` of a run directory (empty when it has no item files)."""
    root = Path(run_dir) / ITEMS_DIR
    if not root.is_dir():
        return {}
    return {
        tag.name: {f.stem: read_source(f) for f in sorted(tag.glob("*.jsonl"))}
        for tag in sorted(root.iterdir())
        if tag.is_dir()
    }


def final_tag(tags: Iterable[str]) -> str | None:
    """The last epoch's tag (``epoch_<max n>``), or ``None`` without epochs."""
    epochs = [int(t.split("_", 1)[1]) for t in tags if t.startswith("epoch_") and t[6:].isdigit()]
    return epoch_tag(max(epochs)) if epochs else None


def item_values(items: Items, metric: str) -> dict[str, float]:
    """``{id: value}`` of one metric (rows without a finite value are left out)."""
    out = {}
    for item_id, row in items.items():
        value = row.get(metric)
        if isinstance(value, bool | int | float) and not math.isnan(float(value)):
            out[item_id] = float(value)
    return out


def paired_values(
    a: Mapping[str, float], b: Mapping[str, float]
) -> tuple[list[str], list[float], list[float]]:
    """The ids both have (sorted) and the two value lists on them."""
    ids = sorted(set(a) & set(b))
    return ids, [a[i] for i in ids], [b[i] for i in ids]
