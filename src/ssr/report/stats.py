"""Paired statistics over evaluation items: bootstrap CIs, exact tests, detectable differences.

Every evaluation scores the same items (lm-eval documents, task rows, self-drift prompts) for
the base model and for each run, so changes are measured *paired*, item by item:

- :func:`paired_change` — mean change (run - base) with a percentile bootstrap CI over items,
  and over seeds too when a method has several (a two-way bootstrap: seeds and items resampled);
- :func:`method_difference` — method B - method A on the shared items, same bootstrap;
- :func:`bootstrap_p` — the p-value of those two when a side has several seeds: the exact item
  tests below see only the seed means, so they ignore how much the seeds disagree;
- :func:`group_difference` — B - A for run-level values (one per seed) with an exact permutation test;
- :func:`mcnemar_exact` / :func:`sign_test` — exact two-sided binomial tests on discordant pairs;
- :func:`benjamini_hochberg` — q-values: the p-values adjusted for the many tests of one table;
- :func:`minimum_detectable_difference` — what a paired test at n items can resolve;
- :func:`cohen_kappa` — agreement of two raters beyond chance (the judge audit).

Bootstraps take a fixed ``seed``: the same inputs give the same interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

DEFAULT_BOOT = 2000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap CI, item and seed counts, and (for differences) a p-value.

    ``p_value`` is from ``test``: the exact item test (``mcnemar``/``sign``) for one seed a side,
    else the two-way ``bootstrap``; ``item_p`` is always the exact ``item_test`` on the per-item
    seed means (it holds the seeds fixed: "do these trained models differ on these items").
    """

    mean: float
    lo: float
    hi: float
    n_items: int
    n_seeds: int = 1
    p_value: float | None = None
    test: str | None = None
    item_p: float | None = None
    item_test: str | None = None

    @property
    def significant(self) -> bool:
        """The CI excludes 0 (at its level)."""
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _matrix(values: Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    """Seeds x items (one row for a plain vector); an empty or ragged input is an error."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty vector or seeds x items matrix, got shape {arr.shape}")
    return arr


def bootstrap_ci(
    values: Sequence[float] | Sequence[Sequence[float]],
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean and percentile bootstrap ``1 - alpha`` CI of per-item values.

    ``values`` is one vector (items) or a seeds x items matrix (the same items under each seed):
    then each replicate resamples seeds and items independently (two-way bootstrap) and takes
    the mean of the resampled block, so the CI covers both sources of variation.
    """
    data = _matrix(values)
    return _interval_estimate(data, bootstrap_means(data, n_boot, seed), alpha)


def _interval_estimate(data: np.ndarray, replicates: np.ndarray, alpha: float) -> Estimate:
    """The mean of a seeds x items ``data`` with the percentile interval of its ``replicates``."""
    lo, hi = percentile_interval(replicates, alpha)
    return Estimate(float(data.mean()), lo, hi, data.shape[1], data.shape[0])


def bootstrap_means(
    values: Sequence[float] | Sequence[Sequence[float]], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """The ``n_boot`` replicate means behind :func:`bootstrap_ci` (for composite statistics:
    e.g. the average over benchmarks of per-benchmark replicates, a stratified bootstrap)."""
    data = _matrix(values)
    n_seeds, n_items = data.shape
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    if n_seeds == 1:
        return data[0][items].mean(axis=1)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return block_sums(data, items, seeds) / (n_seeds * n_items)


def block_sums(data: np.ndarray, items: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``data[seeds[r]][:, items[r]].sum()`` for each replicate ``r`` (``items``: replicates x
    drawn items, ``seeds``: replicates x drawn seeds), from each seed's sums over the drawn items,
    so no resampled block is built: one pass per seed instead of one per replicate."""
    per_seed = np.stack([row[items].sum(axis=1) for row in data])  # seeds x replicates
    return per_seed[seeds, np.arange(len(items))[:, None]].sum(axis=1)


def percentile_interval(replicates: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile interval of the (finite) bootstrap replicates."""
    lo, hi = np.nanquantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_change(
    base: Sequence[float],
    runs: Sequence[float] | Sequence[Sequence[float]],
    binary: bool | None = None,
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean change run - base over the items with a bootstrap CI and a p-value.

    ``runs``: one run's per-item values or a seeds x items matrix (aligned with ``base``). The
    exact item test is McNemar's (0/1 scores; ``binary=None`` detects them) or the sign test's, on
    the seed-mean of each item (0/1 again only where every seed agrees); with several seeds the
    reported p is the two-way bootstrap's (:func:`bootstrap_p`), the item test's kept as ``item_p``.
    """
    base_arr = np.asarray(base, dtype=float)
    run_arr = _matrix(runs)
    if run_arr.shape[1] != base_arr.shape[0]:
        raise ValueError(f"{run_arr.shape[1]} run items for {base_arr.shape[0]} base items")
    changes = run_arr - base_arr[None, :]
    replicates = bootstrap_means(changes, n_boot, seed)
    est = _interval_estimate(changes, replicates, alpha)
    return _with_test(
        est, base_arr, run_arr.mean(axis=0), binary, replicates if run_arr.shape[0] > 1 else None
    )


def method_difference(
    a: Sequence[float] | Sequence[Sequence[float]],
    b: Sequence[float] | Sequence[Sequence[float]],
    binary: bool | None = None,
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean of B - A over shared items (each a vector or seeds x items), bootstrap CI, p-value.

    Each replicate resamples the items (the same for both methods) and each method's seeds; with
    several seeds on a side the p-value is the bootstrap's, as in :func:`paired_change`.
    """
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"methods have {ma.shape[1]} and {mb.shape[1]} items: pair them first")
    n_items = ma.shape[1]
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    sa = rng.integers(0, ma.shape[0], size=(n_boot, ma.shape[0]))
    sb = rng.integers(0, mb.shape[0], size=(n_boot, mb.shape[0]))
    diffs = block_sums(mb, items, sb) / mb.size - block_sums(ma, items, sa) / ma.size
    lo, hi = percentile_interval(diffs, alpha)
    est = Estimate(float(mb.mean() - ma.mean()), float(lo), float(hi), n_items, min(ma.shape[0], mb.shape[0]))
    several = max(ma.shape[0], mb.shape[0]) > 1
    return _with_test(est, ma.mean(axis=0), mb.mean(axis=0), binary, diffs if several else None)


def group_difference(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = DEFAULT_BOOT,
    alpha: float = 0.05,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean of B - mean of A for two independent groups of run-level values (e.g. one value per
    seed): percentile bootstrap CI (each group resampled) and the exact two-sided permutation
    p-value (every split of the pooled values; ``n_items`` counts them, ``n_seeds`` is the smaller
    group). With 3 runs a side the smallest possible p is 2/20 = 0.1."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.size == 0 or vb.size == 0:
        raise ValueError(f"both groups need values (got {va.size} and {vb.size})")
    rng = np.random.default_rng(seed)
    diffs = vb[rng.integers(0, vb.size, size=(n_boot, vb.size))].mean(axis=1) - va[
        rng.integers(0, va.size, size=(n_boot, va.size))
    ].mean(axis=1)
    lo, hi = percentile_interval(diffs, alpha)
    observed = float(vb.mean() - va.mean())
    return Estimate(
        observed, float(lo), float(hi), int(va.size + vb.size), int(min(va.size, vb.size)),
        permutation_p(va, vb), "permutation",
    )  # fmt: skip


def permutation_p(a: Sequence[float], b: Sequence[float], max_splits: int = 20_000) -> float:
    """Exact two-sided permutation p-value of the difference in means of two independent groups:
    the share of the splits of the pooled values (the observed one included) whose |difference| is
    at least the observed one; beyond ``max_splits`` splits, that many drawn at random (fixed seed)."""
    pooled = np.concatenate([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    n, k = pooled.size, len(a)
    observed = abs(pooled[k:].mean() - pooled[:k].mean())
    if math.comb(n, k) <= max_splits:
        splits = [list(c) for c in itertools.combinations(range(n), k)]
    else:
        rng = np.random.default_rng(DEFAULT_SEED)
        splits = [list(range(k))] + [list(rng.permutation(n)[:k]) for _ in range(max_splits - 1)]
    total = pooled.sum()
    hits = 0
    for first in splits:
        sum_a = pooled[first].sum()
        hits += abs((total - sum_a) / (n - k) - sum_a / k) >= observed - 1e-12
    return float(hits / len(splits))


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.isin(arr, (0.0, 1.0)).all())


def _with_test(
    est: Estimate, first: np.ndarray, second: np.ndarray, binary: bool | None, replicates: np.ndarray | None
) -> Estimate:
    """Add the exact item p-value on the per-item (seed-mean) values (McNemar where both are 0/1,
    else the sign test) and the reported one: that, or :func:`bootstrap_p` of the ``replicates``
    where given (several seeds)."""
    if binary is None:
        binary = _is_binary(first) and _is_binary(second)
    if binary:
        item_p, item_test = mcnemar_exact(first, second), "mcnemar"
    else:
        item_p, item_test = sign_test(second - first), "sign"
    p, test = (item_p, item_test) if replicates is None else (bootstrap_p(replicates), "bootstrap")
    return Estimate(**{**asdict(est), "p_value": p, "test": test, "item_p": item_p, "item_test": item_test})


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference: twice the
    share on the smaller side of 0, each count plus one for the observed sample (so the floor is
    ``2 / (n + 1)``). It inverts the percentile interval: p < alpha where the ``1 - alpha``
    interval leaves out 0. A replicate at exactly 0 counts on both sides."""
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        raise ValueError("no finite bootstrap replicates")
    tail = min(int((reps <= 0).sum()), int((reps >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (reps.size + 1)))


# --- exact tests ----------------------------------------------------------------------------------


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (1.0 when n = 0)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_exact(first: Sequence[float], second: Sequence[float]) -> float:
    """Exact McNemar p-value of paired 0/1 outcomes: binomial test on the discordant pairs."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if not (_is_binary(a) and _is_binary(b)):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    only_first = int(((a == 1) & (b == 0)).sum())
    only_second = int(((a == 0) & (b == 1)).sum())
    return binomial_two_sided(only_first, only_first + only_second)


def mcnemar_table(first: Sequence[float], second: Sequence[float]) -> dict[str, int]:
    """The 2x2 table of paired 0/1 outcomes (``both``, ``first_only``, ``second_only``, ``neither``)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    return {
        "both": int(((a == 1) & (b == 1)).sum()),
        "first_only": int(((a == 1) & (b == 0)).sum()),
        "second_only": int(((a == 0) & (b == 1)).sum()),
        "neither": int(((a == 0) & (b == 0)).sum()),
    }


def sign_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign test of paired differences (zeros dropped)."""
    d = np.asarray(differences, dtype=float)
    positive, negative = int((d > 0).sum()), int((d < 0).sum())
    return binomial_two_sided(positive, positive + negative)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order: the smallest false
    discovery rate at which each test would be called, over the family of ``p_values`` given
    (``q_(i) = min over j >= i of m p_(j) / j``, at most 1)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.empty_like(p)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return [float(v) for v in q]


# --- sample size ----------------------------------------------------------------------------------


def minimum_detectable_difference(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired test at ``n`` items detects with
    probability ``power``: ``(z_{1-alpha/2} + z_power) * sd / sqrt(n)`` (normal approximation;
    ``sd`` is the standard deviation of the per-item differences)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * sd / math.sqrt(n)


def difference_sd(differences: Sequence[float], base: Sequence[float] | None = None) -> float:
    """SD of per-item differences for :func:`minimum_detectable_difference`.

    Where nothing changed yet (sd 0) the spread of one 0/1 outcome at the base rate,
    ``sqrt(p(1-p))``, stands in for it, so the MDD is not reported as 0."""
    d = np.asarray(differences, dtype=float)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    if sd == 0 and base is not None and len(base):
        p = float(np.mean(base))
        sd = math.sqrt(p * (1 - p)) if _is_binary(np.asarray(base, dtype=float)) else sd
    return sd


# --- agreement ------------------------------------------------------------------------------------


def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Cohen's kappa of two raters' labels on the same items (``nan`` for no items; 1.0 when
    both always give the same single label)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} and {len(second)} labels: rate the same items")
    n = len(first)
    if n == 0:
        return float("nan")
    labels = sorted(set(first) | set(second), key=str)
    observed = sum(a == b for a, b in zip(first, second)) / n
    expected = sum((list(first).count(c) / n) * (list(second).count(c) / n) for c in labels)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)
