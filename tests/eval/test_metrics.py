"""Metric functions against hand-computed golden values."""

from __future__ import annotations

import numpy as np
import pytest

from sftlab.eval.metrics import (
    compute_accuracy,
    compute_ece,
    compute_exact_match,
    compute_macro_f1,
    compute_rouge_l,
    compute_strict_match,
    compute_token_f1,
    normalize_answer,
)
from sftlab.eval.weighted import ece_statistic, macro_f1_statistic

PREDS = [1, 0, 1, 1]
GOLDS = [1, 1, 1, 0]


def test_accuracy_golden():
    assert compute_accuracy(PREDS, GOLDS) == 0.5
    assert compute_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        compute_accuracy([1], [1, 0])


def test_macro_f1_golden():
    # class 1: TP 2, FP 1 (item 3), FN 1 (item 1) -> 4/6; class 0: TP 0 -> 0; mean 1/3.
    assert compute_macro_f1(PREDS, GOLDS, [0, 1]) == pytest.approx(1 / 3)
    # A label that is neither predicted nor gold counts as F1 0 (penalises, is not dropped).
    assert compute_macro_f1([1, 1], [1, 1], [0, 1]) == pytest.approx(0.5)
    assert compute_macro_f1([0, 1], [0, 1], [0, 1]) == 1.0


def test_ece_golden():
    # Singleton bins 9, 8, 6, 5: (0.1 + 0.8 + 0.4 + 0.55) / 4.
    assert compute_ece([0.9, 0.8, 0.6, 0.55], [1, 0, 1, 0]) == pytest.approx(0.4625)
    # 0.95 and 0.91 share bin 9: |1 - 1.86| = 0.86; bin 6: 0.4 -> 1.26 / 3.
    assert compute_ece([0.95, 0.91, 0.6], [1, 0, 1]) == pytest.approx(0.42)
    # Confidence 1.0 goes to the last bin, perfectly calibrated -> 0.
    assert compute_ece([1.0, 1.0], [1, 1]) == 0.0


def test_squad_normalisation_and_em():
    assert normalize_answer("The  Cat's, a hat!") == "cats hat"
    assert normalize_answer("  An apple\tthe END. ") == "apple end"
    assert compute_exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert compute_exact_match("Eiffel", ["Eiffel Tower", "tower"]) == 0.0
    assert compute_exact_match("Tower", ["Eiffel Tower", "the tower"]) == 1.0  # max over golds
    # "exact" metric: whitespace only, case and punctuation count.
    assert compute_strict_match(" Paris ", ["Paris"]) == 1.0
    assert compute_strict_match("paris", ["Paris"]) == 0.0


def test_squad_token_f1_golden():
    # pred tokens [in, city, of, paris], gold [paris, france]: overlap 1, P 1/4, R 1/2 -> F1 1/3.
    assert compute_token_f1("in the city of Paris", ["Paris, France"]) == pytest.approx(1 / 3)
    # max over golds: the second gold matches exactly.
    assert compute_token_f1("in the city of Paris", ["Paris, France", "city of paris in"]) == 1.0
    # Repeated tokens count with multiplicity: [a1 b, b] vs [b]: overlap 1, P 1/2, R 1 -> 2/3.
    assert compute_token_f1("b b", ["b"]) == pytest.approx(2 / 3)
    assert compute_token_f1("", ["Paris"]) == 0.0


def test_rouge_l_golden():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides.
    assert compute_rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # LCS "b d" = 2: P 2/4, R 2/3 -> F 4/7.
    assert compute_rouge_l("a b c d", ["b d e"]) == pytest.approx(4 / 7)
    assert compute_rouge_l("A, B!", ["x", "a b"]) == 1.0  # lowercase, punctuation dropped, max over refs
    assert compute_rouge_l("", ["a"]) == 0.0


def test_weighted_statistics_equal_plain_metrics():
    """With weights all one (and with a count vector = a repeated list) they equal the plain metrics."""
    rng = np.random.default_rng(0)
    preds, golds = list(rng.integers(0, 3, 50)), list(rng.integers(0, 3, 50))
    conf, ok = list(rng.uniform(0.34, 1.0, 50)), [int(p == g) for p, g in zip(preds, golds)]
    ones = np.ones((1, 50))
    assert macro_f1_statistic(preds, golds, [0, 1, 2])(ones)[0] == pytest.approx(
        compute_macro_f1(preds, golds, [0, 1, 2])
    )
    assert ece_statistic(conf, ok)(ones)[0] == pytest.approx(compute_ece(conf, ok))
    counts = rng.integers(0, 3, 50).astype(float)
    rep = np.repeat(np.arange(50), counts.astype(int))
    f1_rep = compute_macro_f1([preds[i] for i in rep], [golds[i] for i in rep], [0, 1, 2])
    assert macro_f1_statistic(preds, golds, [0, 1, 2])(counts[None])[0] == pytest.approx(f1_rep)
    ece_rep = compute_ece([conf[i] for i in rep], [ok[i] for i in rep])
    assert ece_statistic(conf, ok)(counts[None])[0] == pytest.approx(ece_rep)
