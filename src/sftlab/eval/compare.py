"""Paired comparison of two models scored on the same items: CI, exact test, items gained / lost, verdict.

Tests used (``test`` in the result says which):

- ``mcnemar_exact``: every item is 0/1 (accuracy, exact match). Exact McNemar = two-sided binomial test
  of the discordant pairs against p = 0.5 (as ``scipy.stats.binomtest(gained, gained + lost)``).
- ``sign_flip_exact`` / ``sign_flip_mc``: any other per-item value (token F1, ROUGE-L, window NLL). Paired
  permutation test of the mean difference: under H0 each item's difference is equally likely to have
  either sign. All 2^n sign patterns are enumerated for n <= 16 (as ``scipy.stats.permutation_test``
  with ``permutation_type="samples"``), else 10,000 random patterns with p = (1 + hits) / (1 + draws).

The 95% interval is a paired percentile bootstrap: one resampling of the items is applied to both
vectors. Resamples are drawn as multinomial count vectors ``W`` (n_boot, n) so any statistic that is a
weighted sum over items (mean, confusion counts, calibration bins) can be bootstrapped without Python
loops; see ``bootstrap_weights`` and ``paired_bootstrap_ci``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

ALPHA = 0.05
SIGN_FLIP_EXACT_MAX_N = 16
SIGN_FLIP_DRAWS = 10_000
_CHUNK_ELEMENTS = 4_000_000  # bootstrap / permutation work is done in chunks of at most this many cells

Statistic = Callable[[np.ndarray], np.ndarray]  # weights (k, n) -> statistic of each resample (k,)


# ----------------------------------------------------------------------------------------- exact tests


def compute_mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - m/2| >= |gained - m/2|), X ~ Binomial(m = gained + lost, 1/2).

    Computed with exact integers (no overflow or underflow); 1.0 when there are no discordant pairs.
    """
    m, k = gained + lost, min(gained, lost)
    if m == 0:
        return 1.0
    tail, c = 0, 1
    for i in range(k + 1):  # c = comb(m, i), updated in place
        tail += c
        c = c * (m - i) // (i + 1)
    return min(1.0, 2 * tail / 2**m)


def _flip_hits(diffs: np.ndarray, signs: np.ndarray, observed: float) -> int:
    """How many sign patterns (k, n) give |mean(sign * d)| >= |observed| (up to float round-off)."""
    means = np.abs(signs @ diffs) / len(diffs)
    # Relative tolerance so that patterns equal to the observed one in exact arithmetic count as hits.
    return int(np.count_nonzero(means >= abs(observed) * (1 - 1e-12) - 1e-15))


def compute_sign_flip_p(diffs: Sequence[float], seed: int = 0) -> tuple[float, str]:
    """Two-sided paired permutation (sign-flip) p-value of mean(diffs) == 0, and the test name."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    observed = float(d.mean()) if n else 0.0
    if n == 0 or not np.any(d):
        return 1.0, "sign_flip_exact"
    if n <= SIGN_FLIP_EXACT_MAX_N:
        codes = np.arange(2**n)[:, None] >> np.arange(n)[None, :]
        signs = 1.0 - 2.0 * (codes & 1)  # (2^n, n): every pattern once
        return _flip_hits(d, signs, observed) / 2**n, "sign_flip_exact"
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, _CHUNK_ELEMENTS // n)
    while done < SIGN_FLIP_DRAWS:
        k = min(chunk, SIGN_FLIP_DRAWS - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
        hits += _flip_hits(d, signs, observed)
        done += k
    return (1 + hits) / (1 + SIGN_FLIP_DRAWS), "sign_flip_mc"


# ------------------------------------------------------------------------------------------- bootstrap


def bootstrap_weights(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Resamples of n items as count vectors, in chunks: yields float arrays (k, n) whose rows sum to n.

    Row r counts how often each item is drawn in resample r (multinomial(n, 1/n)); the same seed gives
    the same resamples, so two statistics bootstrapped with one seed are paired.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(np.float64)
        done += k


def paired_bootstrap_ci(
    stat_a: Statistic, stat_b: Statistic, n: int, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``stat_b(W) - stat_a(W)`` over paired bootstrap resamples W (n_boot, n)."""
    if n == 0 or n_boot <= 0:
        return (math.nan, math.nan)
    deltas = np.concatenate([stat_b(w) - stat_a(w) for w in bootstrap_weights(n, n_boot, seed)])
    lo, hi = np.percentile(deltas, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(lo), float(hi)


def weighted_mean(
    values: Sequence[float], transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> Statistic:
    """Statistic ``W -> transform(W @ values / n)``: the (transformed) mean of a resample."""
    x = np.asarray(values, dtype=np.float64)

    def stat(w: np.ndarray) -> np.ndarray:
        m = w @ x / len(x)
        return transform(m) if transform is not None else m

    return stat


# ------------------------------------------------------------------------------------------- verdicts


def decide_verdict(
    delta: float, ci95: tuple[float, float], p_value: float | None, higher_is_better: bool
) -> str:
    """better / worse when the change is significant, else "no significant change".

    Significant means p < 0.05 *and* the 95% interval excludes 0 (when a p-value exists): the exact test
    and the bootstrap can disagree near the boundary, and a verdict should never contradict the shown CI.
    """
    lo, hi = ci95
    excludes_zero = (lo > 0 or hi < 0) if not (math.isnan(lo) or math.isnan(hi)) else False
    significant = excludes_zero and (p_value is None or p_value < ALPHA)
    if not significant or delta == 0:
        return "no significant change"
    return "better" if (delta > 0) == higher_is_better else "worse"


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def paired_compare(
    a: Sequence[float],
    b: Sequence[float],
    *,
    higher_is_better: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Compare per-item results ``a`` (e.g. base) and ``b`` (e.g. fine-tuned) on the same items.

    Returns ``n``, ``mean_a``, ``mean_b``, ``delta`` (mean_b - mean_a), ``ci95`` [lo, hi] of the delta
    (paired percentile bootstrap, ``n_boot`` resamples), ``p_value`` and ``test`` (see module doc),
    ``gained`` / ``lost`` (items where b is better / worse than a, given ``higher_is_better``),
    ``higher_is_better`` and ``verdict`` (better / worse / no significant change, see ``decide_verdict``).
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(f"paired results need two vectors of the same length, got {xa.shape} and {xb.shape}")
    n = len(xa)
    if n == 0:
        raise ValueError("paired_compare needs at least one item")
    diffs = xb - xa
    improvement = diffs if higher_is_better else -diffs
    gained, lost = int(np.sum(improvement > 0)), int(np.sum(improvement < 0))
    if _is_binary(xa) and _is_binary(xb):
        p_value, test = compute_mcnemar_exact_p(gained, lost), "mcnemar_exact"
    else:
        p_value, test = compute_sign_flip_p(diffs, seed=seed)
    delta = float(diffs.mean())
    ci = paired_bootstrap_ci(weighted_mean(xa), weighted_mean(xb), n, n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "delta": delta,
        "ci95": [ci[0], ci[1]],
        "p_value": p_value,
        "test": test,
        "gained": gained,
        "lost": lost,
        "higher_is_better": higher_is_better,
        "verdict": decide_verdict(delta, ci, p_value, higher_is_better),
    }
