"""Optional bridge to lm-evaluation-harness (``pip install 'sftlab[harness]'``) for standard benchmarks.

A task ``{kind: lm_eval, harness_tasks: [hellaswag, arc_easy]}`` runs the harness on the in-memory model
(and the base) and turns every per-document metric into a paired comparison like sftlab's own tasks.
The harness fetches its data sets from the hub, so it needs network access; without the package the
task is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import math

from sftlab.config import TaskConfig
from sftlab.eval.entries import compare_item_metric, make_entry

INSTALL_HINT = "lm-evaluation-harness is not installed (pip install 'sftlab[harness]')"


def harness_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_harness(model, tokenizer, task: TaskConfig, batch_size: int) -> dict:
    """``{harness_task: {"results": {...}, "samples": [...]}}`` from ``lm_eval.simple_evaluate``."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(task.harness_tasks), num_fewshot=task.num_fewshot,
                                  limit=task.limit, log_samples=True)
    return {name: {"results": out["results"].get(name, {}), "samples": out.get("samples", {}).get(name, [])}
            for name in task.harness_tasks}


def per_doc_values(samples: list[dict], metric: str) -> dict[int, float]:
    """doc id -> value of ``metric`` in the harness's logged samples (numeric values only)."""
    out = {}
    for s in samples:
        v = s.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[s.get("doc_id", len(out))] = float(v)
        elif isinstance(v, bool):
            out[s.get("doc_id", len(out))] = float(v)
    return out


def harness_metrics(model_runs: dict, base_runs: dict | None, n_boot: int) -> dict:
    """Scorecard entries ``"<task>/<metric>"``: paired over documents when both runs logged them."""
    metrics = {}
    for name, run in model_runs.items():
        for key, value in run["results"].items():
            metric = key.split(",")[0]  # the harness names metrics "acc,none"
            if metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            label = f"{name}/{metric}"
            mine = per_doc_values(run["samples"], metric)
            theirs = per_doc_values(base_runs[name]["samples"], metric) if base_runs else {}
            common = sorted(set(mine) & set(theirs))
            if common:
                metrics[label] = compare_item_metric([mine[d] for d in common], [theirs[d] for d in common],
                                                     True, n_boot)
            else:
                base_value = base_runs[name]["results"].get(key) if base_runs else None
                delta = None if base_value is None else float(value) - float(base_value)
                metrics[label] = make_entry(float(value), True, len(mine), base=base_value, delta=delta,
                                            verdict="n/a (no per-document results)" if base_runs else None)
    return metrics


def evaluate_harness_task(model, tokenizer, task: TaskConfig, *, base_model=None, base_tokenizer=None,
                          batch_size: int = 32, bootstrap_samples: int = 2000) -> dict:
    """(metrics, extras) for an ``lm_eval`` task; extras carry ``skipped`` when the harness is missing."""
    if not harness_available():
        return {}, {"skipped": INSTALL_HINT}
    if not task.harness_tasks:
        return {}, {"skipped": "harness_tasks is empty: name lm-evaluation-harness tasks, e.g. [hellaswag]"}
    mine = run_harness(model, tokenizer, task, batch_size)
    base = run_harness(base_model, base_tokenizer or tokenizer, task, batch_size) if base_model is not None else None
    return harness_metrics(mine, base, bootstrap_samples), {}
