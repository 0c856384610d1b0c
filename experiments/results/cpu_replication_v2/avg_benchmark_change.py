"""Average benchmark change (points) per method with a 95% CI, and each method - SFT.

From the runs' eval.final per-item results: per benchmark, the items (paired across methods) and
each method's seeds are resampled; a replicate's per-benchmark means are averaged over the
benchmarks with equal weight, as the table's average. Usage: python avg_benchmark_change.py RUN_DIRS...
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ssr import report_stats as rs
from ssr.report import benchmark_keys, find_runs

N_BOOT = 4000


def average_change(paths: list[Path], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    runs = [r for r in find_runs(paths) if rs.has_items(r)]
    groups: dict[str, list] = defaultdict(list)
    for run in runs:
        groups[run.method].append(run)
    bench = [m for m in rs.measures(runs, benchmark_keys(runs)) if m.sources[0].startswith("lm_eval.")]
    rng = np.random.default_rng(seed)
    replicates = {g: np.zeros(n_boot) for g in groups}
    for measure in bench:

        def tag(run, k: int, measure=measure) -> str:
            return rs.pair_tags(run, measure)[k]

        ids = rs.shared_ids(runs, measure, lambda r, tag=tag: [tag(r, 0), tag(r, 1)])
        items = rng.integers(0, len(ids), size=(n_boot, len(ids)))
        for name, group in groups.items():
            base = np.array([[rs.values_at(r, tag(r, 0), measure)[i] for i in ids] for r in group])
            final = np.array([[rs.values_at(r, tag(r, 1), measure)[i] for i in ids] for r in group])
            diff = final - base  # seeds x items
            seeds = rng.integers(0, diff.shape[0], size=(n_boot, diff.shape[0]))
            replicates[name] += np.array([diff[s][:, i].mean() for s, i in zip(seeds, items)]) / len(bench)
    out = {}
    for name, values in replicates.items():
        out[name] = _summary(100 * values)
        if name != "sft" and "sft" in replicates:
            out[name]["minus_sft"] = _summary(100 * (values - replicates["sft"]))
    return {"benchmarks": [m.name for m in bench], "n_boot": n_boot, "methods": out}


def _summary(values: np.ndarray) -> dict:
    return {
        "mean": round(float(values.mean()), 2),
        "ci95": [round(float(x), 2) for x in np.percentile(values, [2.5, 97.5])],
    }


if __name__ == "__main__":
    print(json.dumps(average_change([Path(p) for p in sys.argv[1:]]), indent=1))
