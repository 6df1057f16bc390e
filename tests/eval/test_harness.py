"""lm-evaluation-harness bridge: a missing package is a reported skip; logged samples become paired metrics."""

from __future__ import annotations

import pytest

from sftlab.config import TaskConfig
from sftlab.eval import harness
from sftlab.eval.scorecard import evaluate_task


def test_missing_harness_is_reported_not_dropped(monkeypatch):
    monkeypatch.setattr(harness, "harness_available", lambda: False)
    entry = evaluate_task(None, None, TaskConfig(name="std", kind="lm_eval", harness_tasks=("hellaswag",)),
                          progress=False)
    assert entry["extras"]["skipped"] == harness.INSTALL_HINT
    assert entry["metrics"] == {}


def test_harness_results_become_paired_entries():
    model = {"arc": {"results": {"acc,none": 0.75, "acc_stderr,none": 0.1, "alias": "arc"},
                     "samples": [{"doc_id": i, "acc": v} for i, v in enumerate([1, 1, 1, 0])]}}
    base = {"arc": {"results": {"acc,none": 0.25}, "samples": [{"doc_id": i, "acc": v} for i, v in enumerate([0, 0, 1, 0])]}}
    m = harness.harness_metrics(model, base, n_boot=200)
    assert list(m) == ["arc/acc"]
    e = m["arc/acc"]
    assert e["model"] == pytest.approx(0.75) and e["base"] == pytest.approx(0.25) and e["delta"] == pytest.approx(0.5)
    assert e["gained"] == 2 and e["lost"] == 0
    only = harness.harness_metrics(model, None, n_boot=200)["arc/acc"]
    assert only["model"] == pytest.approx(0.75) and only["base"] is None

