"""Paired statistics against hand-computed cases."""

import itertools
import math

import numpy as np
import pytest

from ssr.report.stats import (
    benjamini_hochberg,
    binomial_two_sided,
    block_sums,
    bootstrap_ci,
    bootstrap_means,
    bootstrap_p,
    cohen_kappa,
    difference_sd,
    mcnemar_exact,
    mcnemar_table,
    method_difference,
    minimum_detectable_difference,
    paired_change,
    sign_test,
)


def test_bootstrap_of_two_items_has_the_exact_percentiles():
    # resampling [0, 1] twice: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95% CI (0, 1)
    est = bootstrap_ci([0.0, 1.0], n_boot=4000, seed=3)
    assert est.mean == 0.5 and (est.lo, est.hi) == (0.0, 1.0) and est.n_items == 2
    assert not est.significant
    constant = bootstrap_ci([0.2, 0.2, 0.2])
    assert (constant.lo, constant.hi) == pytest.approx((0.2, 0.2))


def _exact_quantile(values: list[float], q: float) -> float:
    """The q-quantile of the exact bootstrap distribution of the mean (all n^n resamples)."""
    means = sorted(sum(c) / len(values) for c in itertools.product(values, repeat=len(values)))
    return means[math.ceil(q * len(means)) - 1]


def test_bootstrap_matches_the_enumerated_distribution_and_is_fixed_by_its_seed():
    values = [0.0, 1.0, 3.0]
    # 27 equally likely resamples: P(mean=0) = P(mean=3) = 1/27 > 2.5%, P(mean <= 1/3) = 4/27 > 5%
    assert (_exact_quantile(values, 0.025), _exact_quantile(values, 0.975)) == (0.0, 3.0)
    assert (_exact_quantile(values, 0.05), _exact_quantile(values, 0.95)) == pytest.approx((1 / 3, 7 / 3))
    est = bootstrap_ci(values, n_boot=20000, seed=1)
    assert (est.lo, est.hi) == (0.0, 3.0)
    ninety = bootstrap_ci(values, n_boot=20000, seed=1, alpha=0.1)
    assert (ninety.lo, ninety.hi) == pytest.approx((1 / 3, 7 / 3))
    spread = [0.13, 0.57, 0.91, 0.32, 0.77, 0.05, 0.44]
    assert bootstrap_ci(spread, n_boot=300, seed=7) == bootstrap_ci(spread, n_boot=300, seed=7)
    assert bootstrap_ci(spread, n_boot=300, seed=7) != bootstrap_ci(spread, n_boot=300, seed=8)


def test_seed_bootstrap_widens_the_interval_when_seeds_disagree():
    items = [0.0, 0.1, 0.2, 0.1, 0.0, 0.1]
    one = bootstrap_ci([items])
    two = bootstrap_ci([items, [v + 1.0 for v in items]])
    assert two.n_seeds == 2 and two.mean == pytest.approx(np.mean(items) + 0.5)
    assert two.hi - two.lo > 5 * (one.hi - one.lo)


def test_two_way_bootstraps_are_the_means_of_the_resampled_blocks():
    """The replicates from per-seed item sums equal those of each resampled seeds x items block
    built whole (the definition), for one and for several seeds, and both methods' draws."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(3, 11))
    items, seeds = rng.integers(0, 11, size=(50, 11)), rng.integers(0, 3, size=(50, 3))
    blocks = [data[s][:, i].sum() for s, i in zip(seeds, items)]
    assert block_sums(data, items, seeds) == pytest.approx(blocks, abs=1e-12)
    draws = np.random.default_rng(0)  # bootstrap_means' own draws: items, then seeds
    items, seeds = draws.integers(0, 11, size=(200, 11)), draws.integers(0, 3, size=(200, 3))
    means = [data[s][:, i].mean() for s, i in zip(seeds, items)]
    assert bootstrap_means(data, n_boot=200, seed=0) == pytest.approx(means, abs=1e-12)
    a, b = data[:1], data[1:] + 0.5  # one seed against two
    draws = np.random.default_rng(0)  # method_difference's: items, A's seeds, B's seeds
    items = draws.integers(0, 11, size=(200, 11))
    sa, sb = draws.integers(0, 1, size=(200, 1)), draws.integers(0, 2, size=(200, 2))
    diffs = sorted(b[j][:, i].mean() - a[k][:, i].mean() for i, k, j in zip(items, sa, sb))
    est = method_difference(a, b, n_boot=200, seed=0, alpha=0.1)
    assert (est.lo, est.hi) == pytest.approx(tuple(np.quantile(diffs, [0.05, 0.95])), abs=1e-12)


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): m p / rank = 0.04, 0.06, 0.0533, 0.2; then the
    # running minimum from the largest p down: 0.04, 0.0533, 0.0533, 0.2 (input order kept)
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert benjamini_hochberg([0.5, 0.9]) == [0.9, 0.9] and benjamini_hochberg([0.8] * 3) == pytest.approx(
        [0.8] * 3
    )
    assert benjamini_hochberg([1.0, 0.6]) == [1.0, 1.0] and benjamini_hochberg([]) == []


def test_mcnemar_on_a_hand_computed_table():
    # base right / run wrong on 1 item, base wrong / run right on 6, 3 concordant
    base = [1, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    run = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert mcnemar_table(base, run) == {"both": 2, "first_only": 1, "second_only": 6, "neither": 1}
    # two-sided exact: 2 * P(X <= 1 | n=7, p=1/2) = 2 * (1 + 7) / 128
    assert mcnemar_exact(base, run) == pytest.approx(16 / 128)
    est = paired_change(base, run)
    assert est.test == "mcnemar" and est.p_value == est.item_p == pytest.approx(0.125)
    assert est.mean == pytest.approx(0.5) and est.n_items == 10
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_sign_test_and_binomial_by_hand():
    # five up, one down, one tie (dropped): 2 * (1 + 6) / 64
    assert sign_test([0.3, 0.1, 0.2, 0.5, 0.4, 0.0, -0.2]) == pytest.approx(14 / 64)
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(5, 10) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    est = paired_change([1.0, 2.0, 3.0], [1.5, 2.5, 2.0])
    assert est.test == "sign" and est.p_value == pytest.approx(1.0)


def test_method_difference_on_shared_items():
    sft = [[1, 0, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 1, 1, 0]]
    ssr = [[1, 1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
    est = method_difference(sft, ssr)
    assert est.mean == pytest.approx(np.mean(ssr) - np.mean(sft))
    assert est.n_seeds == 2 and est.lo <= est.mean <= est.hi and est.test == "bootstrap"
    # the seed-mean of each item: ssr higher on 5 items, never lower -> 2 / 32
    assert est.item_p == pytest.approx(2 / 32) and est.item_test == "sign"
    assert est.lo > 0 and est.p_value < 0.05  # the bootstrap p agrees with its CI
    with pytest.raises(ValueError, match="pair them"):
        method_difference([1, 0], [1, 0, 1])


def test_minimum_detectable_difference_by_hand():
    # (z_0.975 + z_0.8) * 0.5 / sqrt(100) = (1.959964 + 0.841621) * 0.05
    assert minimum_detectable_difference(100, 0.5) == pytest.approx(0.1400792, abs=1e-6)
    assert minimum_detectable_difference(400, 0.5) == pytest.approx(0.1400792 / 2, abs=1e-6)
    assert difference_sd([0, 0, 0], base=[1, 0, 1, 0]) == pytest.approx(0.5)
    assert difference_sd([1, -1]) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="n must be"):
        minimum_detectable_difference(0, 1.0)


def test_cohen_kappa_by_hand():
    # observed agreement 4/6, chance agreement 1/2 -> (2/3 - 1/2) / (1/2) = 1/3
    assert cohen_kappa([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == pytest.approx(1 / 3)
    assert cohen_kappa([True, False], [True, False]) == 1.0
    assert cohen_kappa([1, 1], [1, 1]) == 1.0
    assert math.isnan(cohen_kappa([], []))


def test_permutation_p_counts_the_splits_at_least_as_extreme():
    from ssr.report.stats import group_difference, permutation_p

    # [1, 2] vs [3, 4]: of the 6 splits, the observed one and its mirror reach |difference| 2
    assert permutation_p([1, 2], [3, 4]) == pytest.approx(2 / 6)
    assert permutation_p([1, 2, 3], [1, 2, 3]) == 1.0
    # beyond max_splits: drawn splits, the observed one included, fixed seed
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(3, 1, 30)
    assert permutation_p(a, b, max_splits=500) == pytest.approx(1 / 500)
    est = group_difference([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    assert est.mean == pytest.approx(0.4) and est.lo > 0 and est.p_value == pytest.approx(0.1)
    with pytest.raises(ValueError, match="both groups need values"):
        group_difference([], [1.0])


def test_bootstrap_p_by_hand():
    # twice the smaller side of 0, each count plus one for the observed sample
    assert bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(2 * 2 / 5)
    assert bootstrap_p(np.ones(9)) == pytest.approx(2 / 10)  # the floor at 9 replicates
    assert bootstrap_p(np.array([0.0, 0.0, 1.0])) == 1.0  # zeros count on both sides
    assert bootstrap_p(np.array([np.nan, -1.0, -2.0, -3.0])) == pytest.approx(2 / 4)  # NaN dropped
    with pytest.raises(ValueError, match="finite"):
        bootstrap_p(np.array([np.nan]))


def test_seeds_that_disagree_are_not_called_different_by_their_seed_means():
    """Seed 1 gets every item right that the base got wrong, seed 2 changes nothing: the seed
    means (0.5 on every item) all moved up, so the exact item test calls it (p 2 / 2^20), but
    with half the seeds at no change the seed-aware p must not."""
    base = np.zeros(20)
    runs = np.stack([np.ones(20), np.zeros(20)])
    change = paired_change(base, runs)
    assert change.item_p == pytest.approx(2 / 2**20) and change.item_test == "sign"  # means 0.5: not 0/1
    assert change.test == "bootstrap"
    assert change.p_value > 0.3 and change.lo == 0.0  # a quarter of the seed draws are seed 2 twice
    diff = method_difference(np.zeros((1, 20)), runs)
    assert diff.test == "bootstrap" and diff.p_value > 0.3 and diff.item_p < 1e-5
    one = paired_change(base, runs[:1])  # one seed: the exact test is the p
    assert one.test == "mcnemar" and one.p_value == one.item_p == pytest.approx(2 / 2**20)
