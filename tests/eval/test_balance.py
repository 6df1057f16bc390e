"""Specialty gain / versatility loss per point: golden values on synthetic scorecards, paired shares, the base
and a copy of the reference as controls, the table and the plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sftlab.eval.balance import balance_points, format_balance, plot_balance, write_balance


def card(spec_model, spec_base, ppl_model, ppl_base, acc_model, acc_base):
    """A scorecard with a specialty accuracy task, a perplexity task (NLL items) and a versatility accuracy."""
    def task(name, kind, role, metric, model, base, hib):
        key = "nll" if kind == "perplexity" else metric
        return {"name": name, "kind": kind, "role": role, "headline": [metric],
                "metrics": {metric: {"higher_is_better": hib}}, "items": {"model": {key: model}, "base": {key: base}}}

    return {"tasks": [task("sst2", "classification", "specialty", "accuracy", spec_model, spec_base, True),
                      task("wiki", "perplexity", "versatility", "perplexity", ppl_model, ppl_base, False),
                      task("squad", "generation", "versatility", "f1", acc_model, acc_base, True)]}  # fmt: skip


BASE = dict(spec_base=[0, 1, 0, 1, 0, 1, 0, 1], ppl_base=[3.0, 3.2, 2.8, 3.0], acc_base=[0.5, 0.5, 0.5, 0.5])
FULL = dict(spec_model=[1, 1, 1, 1, 1, 1, 0, 1], ppl_model=[3.3, 3.5, 3.1, 3.3], acc_model=[0.4, 0.4, 0.4, 0.4])
LIGHT = dict(spec_model=[1, 1, 1, 1, 1, 1, 0, 1], ppl_model=[3.05, 3.25, 2.85, 3.05], acc_model=[0.5, 0.5, 0.5, 0.5])


def points():
    full = card(**FULL, **BASE)
    return [
        {"name": "base", "group": "base", "card": full, "side": "base"},
        {"name": "full_ft", "group": "full", "card": full},
        {"name": "light", "group": "light", "card": card(**LIGHT, **BASE)},
        {"name": "copy", "group": "copy", "card": card(**FULL, **BASE)},
    ]


def test_golden_gain_loss_and_shares():
    rows = {r["name"]: r for r in balance_points(points(), n_boot=300)}
    full, light, copy, base = rows["full_ft"], rows["light"], rows["copy"], rows["base"]
    assert full["gain"] == pytest.approx(100 * (7 / 8 - 4 / 8))
    ppl_loss = 100 * (math.exp(3.3) - math.exp(3.0)) / math.exp(3.0)  # mean NLL 3.0 -> 3.3
    f1_loss = 100 * (0.5 - 0.4) / 0.5
    assert full["loss"] == pytest.approx((ppl_loss + f1_loss) / 2)
    assert light["gain"] == pytest.approx(full["gain"]) and light["gain_share"] == pytest.approx(1.0)
    assert light["loss"] == pytest.approx(100 * (math.exp(3.05) - math.exp(3.0)) / math.exp(3.0) / 2)
    assert light["loss_share"] == pytest.approx(light["loss"] / full["loss"])
    assert light["meets_target"] and light["pareto"] and not full["pareto"]  # same gain, less loss
    # Paired: a copy of the reference has share exactly 1 in every resample; unpaired resamples would not.
    assert copy["gain_share_ci"] == pytest.approx([1.0, 1.0]) and copy["loss_share_ci"] == pytest.approx([1.0, 1.0])
    assert not copy["meets_target"]
    assert base["gain"] == 0 and base["loss"] == 0 and "gain_share" not in base
    lo, hi = full["gain_ci"]
    assert lo < full["gain"] < hi and "gain_share" not in full


def test_a_gain_on_one_versatility_metric_does_not_pay_for_a_loss_on_another():
    better_f1 = dict(FULL, acc_model=[0.9, 0.9, 0.9, 0.9])  # the untrained task improved a lot
    pts = [{"name": "full_ft", "group": "full", "card": card(**FULL, **BASE)},
           {"name": "x", "group": "x", "card": card(**better_f1, **BASE)}]  # fmt: skip
    rows = {r["name"]: r for r in balance_points(pts, n_boot=100)}
    ppl_loss = 100 * (math.exp(3.3) - math.exp(3.0)) / math.exp(3.0)
    assert rows["x"]["loss"] == pytest.approx(ppl_loss / 2)  # f1 counts 0, not -80%
    assert rows["x"]["loss_ci"][0] >= 0


def test_needs_base_items_and_one_specialty_task():
    bad = points()
    bad[1]["card"]["tasks"][0]["items"]["base"] = None
    with pytest.raises(ValueError, match="no base items"):
        balance_points(bad, n_boot=50)
    two = points()
    two[2]["card"]["tasks"][2]["role"] = "specialty"
    with pytest.raises(ValueError, match="one specialty"):
        balance_points(two, n_boot=50)


def test_table_plot_and_files(tmp_path):
    rows = balance_points(points(), n_boot=100)
    md = format_balance({"sst2": rows}, "t")
    assert "| light | +37.5 [" in md and "| 100% [100, 100] |" in md
    assert plot_balance({"sst2": rows, "again": rows}, tmp_path / "p.png").stat().st_size > 10_000
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    entries = []
    for p in points():
        path = sweep / f"{p['name']}.json"
        path.write_text(json.dumps(p["card"]))
        entries.append({"name": p["name"], "group": p["group"], "scorecard": str(path)})
    (sweep / "tradeoff.json").write_text(json.dumps({"points": entries}))
    files = write_balance({"sst2": sweep}, tmp_path / "out", title="x")
    saved = json.loads(files[0].read_text())["tasks"]["sst2"]
    assert [r["name"] for r in saved] == ["base", "full_ft", "light", "copy"]
    assert np.isclose(saved[2]["gain_share"], 1.0)
