"""Average benchmark change (points) per method with a 95% CI, and each method - SFT, from the
eval.final per-item results: per benchmark, items and seeds resampled (items paired across
methods), the replicate means averaged over the 7 benchmarks (equal weight, as the table)."""

import json, sys
from collections import defaultdict
from pathlib import Path
import numpy as np
from ssr.report import find_runs, benchmark_keys
from ssr import report_stats as rs

paths = [Path(p) for p in sys.argv[1:]]
runs = [r for r in find_runs(paths) if rs.has_items(r)]
groups = defaultdict(list)
for r in runs:
    groups[r.method].append(r)
bench = [m for m in rs.measures(runs, benchmark_keys(runs)) if m.sources[0].startswith("lm_eval.")]
rng = np.random.default_rng(0)
B = 4000
reps = {g: np.zeros(B) for g in groups}
for m in bench:
    tags = lambda r, m=m: list(rs.pair_tags(r, m))
    ids = rs.shared_ids(runs, m, tags)
    items = rng.integers(0, len(ids), size=(B, len(ids)))
    for g, grp in groups.items():
        base = rs._matrix(grp, lambda r, m=m: rs.pair_tags(r, m)[0], m, ids)
        fin = rs._matrix(grp, lambda r, m=m: rs.pair_tags(r, m)[1], m, ids)
        d = fin - base  # seeds x items
        seeds = rng.integers(0, d.shape[0], size=(B, d.shape[0]))
        reps[g] += np.array([d[s][:, i].mean() for s, i in zip(seeds, items)]) / len(bench)
out = {}
for g in groups:
    v = 100 * reps[g]
    out[g] = {
        "avg_change": round(float(v.mean()), 2),
        "ci": [round(float(x), 2) for x in np.percentile(v, [2.5, 97.5])],
    }
    if g != "sft":
        d = 100 * (reps[g] - reps["sft"])
        out[g]["minus_sft"] = round(float(d.mean()), 2)
        out[g]["minus_sft_ci"] = [round(float(x), 2) for x in np.percentile(d, [2.5, 97.5])]
print(json.dumps({"benchmarks": [m.name for m in bench], "n_boot": B, "methods": out}, indent=1))
