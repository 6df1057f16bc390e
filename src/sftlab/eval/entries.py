"""Scorecard entries: per-metric model / base values, delta, 95% CI, test, items gained / lost, verdict.

Every entry has the same keys (``ENTRY_KEYS``); what a comparison cannot give is null. The base is side
"a" and the model side "b" of ``paired_compare``, so ``delta`` = model - base.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sftlab.eval.compare import decide_verdict, paired_bootstrap_ci, paired_compare, weighted_mean
from sftlab.eval.weighted import ece_statistic, macro_f1_statistic

ENTRY_KEYS = ("model", "base", "delta", "ci95", "p_value", "test", "gained", "lost", "verdict")


def make_entry(model: float, higher_is_better: bool, n: int, **fields) -> dict:
    """An entry with every key of ``ENTRY_KEYS`` (null unless given) plus ``higher_is_better`` and ``n``."""
    entry = dict.fromkeys(ENTRY_KEYS)
    entry.update(model=model, higher_is_better=higher_is_better, n=n, **fields)
    return entry


def compare_item_metric(
    model_vals: Sequence[float], base_vals: Sequence[float], higher_is_better: bool, n_boot: int
) -> dict:
    """Entry of a metric that is the mean of per-item values (accuracy, EM, F1, ROUGE-L)."""
    c = paired_compare(base_vals, model_vals, higher_is_better=higher_is_better, n_boot=n_boot)
    fields = {k: c[k] for k in ("delta", "ci95", "p_value", "test", "gained", "lost", "verdict")}
    return make_entry(c["mean_b"], higher_is_better, c["n"], base=c["mean_a"], **fields)


def compare_set_metric(
    model_value: float, base_value: float, stat_model, stat_base, n: int, higher_is_better: bool, n_boot: int
) -> dict:
    """Entry of a metric of the whole set (macro-F1, ECE): paired bootstrap CI, no exact test."""
    ci = paired_bootstrap_ci(stat_base, stat_model, n, n_boot=n_boot)
    delta = model_value - base_value
    verdict = decide_verdict(delta, ci, None, higher_is_better)
    return make_entry(
        model_value, higher_is_better, n, base=base_value, delta=delta, ci95=list(ci), test="bootstrap",
        verdict=verdict,
    )  # fmt: skip


def build_classification_metrics(res: dict, base: dict | None, n_boot: int) -> dict:
    """accuracy (exact McNemar), macro_f1 and ece (bootstrap) entries."""
    n = res["n"]
    if base is None:
        return {
            "accuracy": make_entry(res["accuracy"], True, n),
            "macro_f1": make_entry(res["macro_f1"], True, n),
            "ece": make_entry(res["ece"], False, n),
        }

    def column(r: dict, key: str) -> list:
        return [it[key] for it in r["items"]]

    labels = res["labels"]
    f1_m = macro_f1_statistic(column(res, "pred"), column(res, "gold"), labels)
    f1_b = macro_f1_statistic(column(base, "pred"), column(base, "gold"), labels)
    ece_m = ece_statistic(column(res, "confidence"), column(res, "correct"))
    ece_b = ece_statistic(column(base, "confidence"), column(base, "correct"))
    return {
        "accuracy": compare_item_metric(column(res, "correct"), column(base, "correct"), True, n_boot),
        "macro_f1": compare_set_metric(res["macro_f1"], base["macro_f1"], f1_m, f1_b, n, True, n_boot),
        "ece": compare_set_metric(res["ece"], base["ece"], ece_m, ece_b, n, False, n_boot),
    }


def build_generation_metrics(res: dict, base: dict | None, names: list[str], n_boot: int) -> dict:
    """One entry per metric of the family; items are paired by position."""
    if base is None:
        return {name: make_entry(res[name], True, res["n"]) for name in names}
    return {
        name: compare_item_metric(
            [it[name] for it in res["items"]], [it[name] for it in base["items"]], True, n_boot
        )
        for name in names
    }


def build_reply_metrics(res: dict, base: dict | None, n_boot: int) -> dict:
    """reply_nll entry (mean nats per reply token, lower is better); items paired by position."""
    if base is None:
        return {"reply_nll": make_entry(res["reply_nll"], False, res["n"])}
    return {"reply_nll": compare_item_metric([it["nll"] for it in res["items"]],
                                             [it["nll"] for it in base["items"]], False, n_boot)}


def build_perplexity_metrics(res: dict, base: dict | None, paired: bool, n_boot: int) -> dict:
    """perplexity entry (windows paired when both models saw the same token ids) and kl_to_base entry.

    Test and items gained / lost are on per-window NLL (lower is better); delta and CI are on
    perplexity itself, from the same resamples read as exp(mean NLL).
    """
    n = res["n_windows"]
    if base is None:
        return {"perplexity": make_entry(res["perplexity"], False, n)}
    delta = res["perplexity"] - base["perplexity"]
    if not paired:
        verdict = "n/a (different tokenizers)"
        return {
            "perplexity": make_entry(
                res["perplexity"], False, n, base=base["perplexity"], delta=delta, verdict=verdict
            )
        }
    nll_m, nll_b = [it["nll"] for it in res["items"]], [it["nll"] for it in base["items"]]
    c = paired_compare(nll_b, nll_m, higher_is_better=False, n_boot=n_boot)
    ci = paired_bootstrap_ci(weighted_mean(nll_b, np.exp), weighted_mean(nll_m, np.exp), n, n_boot=n_boot)
    out = {
        "perplexity": make_entry(
            res["perplexity"], False, n, base=base["perplexity"], delta=delta, ci95=list(ci),
            p_value=c["p_value"], test=c["test"], gained=c["gained"], lost=c["lost"],
            verdict=decide_verdict(delta, ci, c["p_value"], False),
        )
    }  # fmt: skip
    if "kl_to_base" in res:
        # A drift measure, not a score: KL(base || base) = 0 is the base column, no better / worse.
        kl = [it["kl"] for it in res["items"]]
        kl_ci = paired_bootstrap_ci(weighted_mean(np.zeros(n)), weighted_mean(kl), n, n_boot=n_boot)
        out["kl_to_base"] = make_entry(
            res["kl_to_base"], False, n, base=0.0, delta=res["kl_to_base"], ci95=list(kl_ci),
            test="bootstrap", verdict="n/a",
        )  # fmt: skip
    return out
