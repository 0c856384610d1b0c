"""Run directories -> Run records (scores, drift, stages, config) and the keys they share."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Which metric stands for a benchmark in the table (lm-eval metric names).
PRIMARY_METRIC = {
    "hellaswag": "acc_norm",
    "gsm8k": "exact_match",
    "self_drift": "nll_increase_rel",
}


# drift measures (lower = less drift), kept out of the benchmark averages (kl_task, in nats per
# token, is no table column: the paired statistics and the Pareto section report it)
DRIFT_MEASURES = ("self_drift", "kl_task")


TASK_COLUMNS = ("unanswerable_f1", "answer_recall")  # the combined task score: their mean
# the task as three numbers that cannot hide each other: refusing the unanswerable rows, answering
# the answerable ones (1 - over_refusal) and the answers' quality where it answers
TASK_BREAKDOWN = ("unanswerable_f1", "over_refusal", "answered_recall")
# generated replies (IFEval: official prompt-level scores, refusals leaking vs the base's replies),
# columns of their own, kept out of the benchmark averages
GENERATIVE_COLUMNS = (
    "suite/ifeval/prompt_level_strict_acc",
    "suite/ifeval/prompt_level_loose_acc",
    "suite/ifeval/refusal_leak",
)


@dataclass
class Run:
    path: Path
    method: str
    seed: int
    selection: dict[str, Any] | None
    base: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    # per epoch: epoch (train + val), drift (suite + self-drift), tasks (task metrics), eval (all)
    seconds: list[dict[str, float]] = field(default_factory=list)
    wall_s: float | None = None
    lr: float | None = None
    # the base scores of the per-epoch evaluations (== base unless the run has an eval.final one)
    epoch_base: dict[str, float] = field(default_factory=dict)
    final_eval: bool = False  # base / final suite scores come from the eval.final evaluation
    final_eval_s: float | None = None  # its seconds (the base's too where this run computed it)
    final_ifeval_s: float | None = None  # the IFEval part of it

    @property
    def curve_base(self) -> dict[str, float]:
        """The base point of the per-epoch curves (older runs.json files have no ``epoch_base``)."""
        return self.epoch_base or self.base


def _flatten(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def load_run(path: Path) -> Run:
    """Read one run directory (``summary.json`` is required; the others are optional)."""
    summary = json.loads((path / "summary.json").read_text())
    run = Run(
        path=path,
        method=summary["method"],
        seed=int(summary.get("seed", 0)),
        selection=summary.get("selection"),
        wall_s=summary.get("wall_s_total", summary.get("wall_s")),
        lr=summary.get("lr", _config_lr(path)),
    )
    if (path / "eval.json").is_file():
        ev = json.loads((path / "eval.json").read_text())
        run.base.update(_flatten(ev.get("base", {})))
        run.final.update(_flatten(ev.get("final", {})))
    if (path / "drift.json").is_file():
        drift = json.loads((path / "drift.json").read_text())
        suite = lambda rec: {f"suite/{k}": v for k, v in _flatten((rec or {}).get("scores", {})).items()}  # noqa: E731
        run.base.update(suite(drift.get("base")))
        run.epoch_base.update(run.base)
        for rec in drift.get("epochs", []):
            run.epochs.append(suite(rec))
            sec = dict(rec.get("seconds") or {})
            if "drift" not in sec and "eval" in sec and "tasks" not in rec:  # older files: eval = drift
                sec["drift"] = sec["eval"]
            run.seconds.append(sec)
        if run.epochs:
            run.final.update(run.epochs[-1])
        if drift.get("final"):  # the larger end-of-training evaluation replaces the last epoch's
            for scores, rec in ((run.base, drift["final"]["base"]), (run.final, drift["final"]["model"])):
                for key in [k for k in scores if k.startswith("suite/")]:
                    del scores[key]  # a benchmark the final evaluation left out is no column either
                scores.update(suite(rec))
                scores.update(_flatten({"tasks": rec.get("tasks") or {}}))  # eval.final.tasks' own sets
            run.final_eval = True
            recs = [
                drift["final"]["model"],
                *([] if drift["final"]["base"].get("cached") else [drift["final"]["base"]]),
            ]
            run.final_eval_s = round(sum(float((r.get("seconds") or {}).get("eval", 0.0)) for r in recs), 2)
            ifeval_s = [float(s["ifeval"]) for r in recs if "ifeval" in (s := r.get("seconds") or {})]
            run.final_ifeval_s = round(sum(ifeval_s), 2) if ifeval_s else None
    return run


def config_value(path: Path, *keys: str) -> Any:
    """The value at ``keys`` in the run's ``.hydra/config.yaml`` (``None`` where the file or a key
    is missing)."""
    config = path / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where built: ~10x faster
    node: Any = yaml.load(config.read_text(), Loader=loader) or {}
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _config_lr(path: Path) -> float | None:
    """``optim.lr`` from the run's config (runs whose summary has no ``lr``)."""
    lr = config_value(path, "optim", "lr")
    return float(lr) if lr is not None else None


def find_runs(paths: list[Path]) -> list[Run]:
    """Every directory at or below ``paths`` that holds a summary.json; a ``runs.json`` file
    (written by :func:`write_report`) given as a path is read back instead."""
    runs: list[Run] = []
    for root in map(Path, paths):
        if root.is_file():
            runs += [Run(**{**d, "path": Path(d["path"])}) for d in json.loads(root.read_text())["runs"]]
    dirs = sorted(
        {p.parent for root in paths if Path(root).is_dir() for p in Path(root).rglob("summary.json")}
    )
    return runs + [load_run(d) for d in dirs]


def export_runs(runs: list[Run], path: Path) -> Path:
    """All numbers the report uses, in one JSON file (``find_runs([path])`` reads it back)."""
    payload = {"runs": [{**asdict(r), "path": str(r.path)} for r in runs]}
    path.write_text(json.dumps(payload, indent=1))
    return path


def benchmark_keys(runs: list[Run]) -> list[str]:
    """One key per benchmark: ``suite/<task>/<primary metric>`` present in the base scores."""
    return primary_keys(key for run in runs for key in run.base)


def primary_keys(keys: Iterable[str]) -> list[str]:
    """Of flat ``suite/<task>/<metric>`` keys, the one per benchmark that stands for it (its
    primary metric; a group's score stands for its subtasks)."""
    tasks: dict[str, str] = {}
    for key in keys:
        if not key.startswith("suite/"):
            continue
        _, task, metric = key.split("/", 2)
        want = next((m for t, m in PRIMARY_METRIC.items() if t in task), "acc")
        if metric.split(",")[0] == want:
            tasks.setdefault(task, key)
    # a group's score stands for its subtasks (ssr_mmlu, not each ssr_mmlu_<subject>)
    subtasks = {t for t in tasks for g in tasks if t != g and t.startswith(g + "_")}
    return [tasks[t] for t in sorted(tasks) if t not in subtasks]


def task_keys(runs: list[Run]) -> list[str]:
    """Task-metric columns: unanswerable F1 and answer recall per set; for answerable-only sets
    (e.g. NQ open-book) the share answered (``unanswerable_accuracy``: not refused) instead of F1."""
    sets = task_sets(k for r in runs for k in r.final)
    return task_columns(sets, answerable_only([r.base for r in runs]))


def task_sets(keys: Iterable[str]) -> list[str]:
    """The task sets named by flat ``tasks/<set>/<metric>`` keys, sorted."""
    return sorted({k.split("/")[1] for k in keys if k.startswith("tasks/")})


def answerable_only(bases: Sequence[dict[str, float]]) -> Callable[[str], bool]:
    """Whether a task set has no unanswerable rows in any of these base scores (those that have
    the set: an ``eval.final.tasks`` set may be in some runs' records only)."""

    def only(name: str) -> bool:
        counts = [b[k] for b in bases if (k := f"tasks/{name}/n_unanswerable") in b]
        return bool(counts) and all(n == 0 for n in counts)

    return only


def task_columns(sets: Iterable[str], answerable_only: Callable[[str], bool]) -> list[str]:
    """The combined task score's columns of each named set (see :func:`task_keys`)."""
    keys = []
    for name in sets:
        first = "unanswerable_accuracy" if answerable_only(name) else TASK_COLUMNS[0]
        keys += [f"tasks/{name}/{first}", *(f"tasks/{name}/{m}" for m in TASK_COLUMNS[1:])]
    return keys


def generative_keys(runs: list[Run]) -> list[str]:
    """IFEval columns (where the runs have IFEval) and the over-refusal of each out-of-domain set
    (the share of its answerable questions declined)."""
    keys = [k for k in GENERATIVE_COLUMNS if any(k in r.final for r in runs)]
    ood = [name for name in task_sets(k for r in runs for k in r.final) if name.startswith("ood_")]
    return keys + [k for name in ood if any((k := f"tasks/{name}/over_refusal") in r.final for r in runs)]


def _fmt(values: list[float | None]) -> str:
    """Fractions as percent: ``mean ± std`` over the values (just the mean for one)."""
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    return f"{mean:.1f}" if len(vals) == 1 else f"{mean:.1f} ± {statistics.stdev(vals):.1f}"


def relative_change(
    run: Run,
    keys: list[str],
    scores: dict[str, float] | None = None,
    relative: bool = True,
    base: dict[str, float] | None = None,
) -> float | None:
    """Mean change vs base over the benchmarks (self-drift excluded: lower is better), relative
    to each base score (the paper's average) or, with ``relative=False``, in absolute units.

    ``scores``/``base`` default to the run's final and base scores (pass ``run.epochs[i]`` and
    ``run.curve_base`` for an epoch)."""
    scores = run.final if scores is None else scores
    base = run.base if base is None else base
    changes = [
        (scores[k] - base[k]) / (abs(base[k]) if relative else 1.0)
        for k in keys
        if k in scores and k in base and base[k] and not any(d in k for d in DRIFT_MEASURES)
    ]
    return statistics.fmean(changes) if changes else None


def _by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by method, the paper's methods first."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.method].append(r)
    known = [m for m in ("sft", "ssr", "sdft", "s3ft") if m in groups]
    return {m: groups[m] for m in known + sorted(set(groups) - set(known))}
