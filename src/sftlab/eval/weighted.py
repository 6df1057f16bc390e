"""Metrics as functions of resample weights, for bootstrap intervals of metrics that are not item means.

Each builder returns a statistic ``W (k, n) -> (k,)``: row r of W counts how often each item is in
resample r (``compare.bootstrap_weights``). With W = all ones the statistic equals the plain metric of
``metrics`` (tested), so the interval is around the reported value.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from sftlab.eval.compare import Statistic


def _one_hot(values: Sequence[Hashable], classes: Sequence[Hashable]) -> np.ndarray:
    """(n, C) float indicator of ``values[i] == classes[c]``."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(values), len(classes)))
    for i, v in enumerate(values):
        if v in index:
            out[i, index[v]] = 1.0
    return out


def macro_f1_statistic(
    preds: Sequence[Hashable], golds: Sequence[Hashable], labels: Sequence[Hashable]
) -> Statistic:
    """Weighted macro-F1: per class 2 TP / (2 TP + FP + FN) with weighted counts, mean over ``labels``."""
    p, g = _one_hot(preds, labels), _one_hot(golds, labels)
    tp_cells = p * g

    def stat(w: np.ndarray) -> np.ndarray:
        tp, pred_count, gold_count = w @ tp_cells, w @ p, w @ g  # each (k, C)
        denom = pred_count + gold_count  # = 2 TP + FP + FN
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return f1.mean(axis=1)

    return stat


def ece_statistic(confidences: Sequence[float], correct: Sequence[float], n_bins: int = 10) -> Statistic:
    """Weighted ECE with the binning of ``metrics.compute_ece``."""
    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    member = np.zeros((len(conf), n_bins))
    member[np.arange(len(conf)), bins] = 1.0
    conf_cells, ok_cells = member * conf[:, None], member * ok[:, None]

    def stat(w: np.ndarray) -> np.ndarray:
        gap = np.abs(w @ ok_cells - w @ conf_cells).sum(axis=1)  # sum over bins of |sum ok - sum conf|
        return gap / w.sum(axis=1)

    return stat
