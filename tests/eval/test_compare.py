"""Paired comparison against reference computations with scipy on synthetic result vectors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sftlab.eval.compare import compute_mcnemar_exact_p, compute_sign_flip_p, decide_verdict, paired_compare


def synthetic_binary(n: int = 300, p_a: float = 0.70, p_b: float = 0.80, seed: int = 1):
    rng = np.random.default_rng(seed)
    a = (rng.uniform(size=n) < p_a).astype(int)
    b = (rng.uniform(size=n) < p_b).astype(int)
    return a, b


def test_mcnemar_matches_scipy_binomtest():
    a, b = synthetic_binary()
    res = paired_compare(a, b, n_boot=500)
    gained, lost = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    assert (res["gained"], res["lost"]) == (gained, lost)
    assert res["test"] == "mcnemar_exact"
    assert res["p_value"] == pytest.approx(stats.binomtest(gained, gained + lost, 0.5).pvalue, rel=1e-9)
    assert res["delta"] == pytest.approx(b.mean() - a.mean())
    for g, lo in [(0, 0), (5, 5), (0, 7), (30, 12), (400, 350)]:
        ref = stats.binomtest(g, g + lo, 0.5).pvalue if g + lo else 1.0
        assert compute_mcnemar_exact_p(g, lo) == pytest.approx(ref, rel=1e-9)


def test_sign_flip_exact_matches_scipy_permutation_test():
    rng = np.random.default_rng(2)
    for n in (6, 12, 16):
        d = rng.normal(0.3, 1.0, n)
        ref = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
        ).pvalue
        p, test = compute_sign_flip_p(d)
        assert test == "sign_flip_exact"
        assert p == pytest.approx(ref, rel=1e-9)


def test_sign_flip_monte_carlo_close_to_scipy():
    rng = np.random.default_rng(3)
    a = rng.uniform(size=200)
    b = np.clip(a + rng.normal(0.03, 0.2, 200), 0, 1)
    res = paired_compare(a, b, n_boot=500)
    ref = stats.permutation_test(
        (b - a,), np.mean, permutation_type="samples", n_resamples=20000, alternative="two-sided", rng=5
    ).pvalue
    assert res["test"] == "sign_flip_mc"
    assert res["p_value"] == pytest.approx(ref, abs=0.02)
    assert 0.005 < ref < 0.5  # the case is informative (neither 0 nor 1)


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    a, b = synthetic_binary(n=400, seed=4)
    res = paired_compare(a, b, n_boot=20000)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=20000,
        rng=7,
    ).confidence_interval
    se = np.std(b - a, ddof=1) / np.sqrt(len(a))
    # Two Monte Carlo estimates of the same percentiles: agree to a small share of the standard error.
    assert res["ci95"][0] == pytest.approx(ref.low, abs=0.1 * se)
    assert res["ci95"][1] == pytest.approx(ref.high, abs=0.1 * se)
    # ... and both are close to the normal-theory interval mean +- 1.96 se.
    assert res["ci95"][0] == pytest.approx(res["delta"] - 1.96 * se, abs=0.15 * se)


def test_verdicts():
    a, b = synthetic_binary(n=1000, p_a=0.6, p_b=0.8, seed=5)
    assert paired_compare(a, b, n_boot=500)["verdict"] == "better"
    assert paired_compare(b, a, n_boot=500)["verdict"] == "worse"
    # Lower is better (e.g. NLL): b higher -> worse; gained / lost swap.
    lower = paired_compare(a, b, higher_is_better=False, n_boot=500)
    assert lower["verdict"] == "worse" and lower["gained"] < lower["lost"]
    same = paired_compare(a, a, n_boot=200)
    assert (
        same["verdict"] == "no significant change" and same["p_value"] == 1.0 and same["ci95"] == [0.0, 0.0]
    )
    # The CI and the test must agree for a verdict.
    assert decide_verdict(0.1, (0.01, 0.2), 0.2, True) == "no significant change"
    assert decide_verdict(0.1, (-0.01, 0.2), 0.01, True) == "no significant change"
    assert decide_verdict(-0.1, (-0.2, -0.01), 0.01, False) == "better"


def test_paired_compare_rejects_unpaired_vectors():
    with pytest.raises(ValueError):
        paired_compare([1, 0], [1, 0, 1])
    with pytest.raises(ValueError):
        paired_compare([], [])
