"""The scorecard: every task for the model (and the base), paired comparisons, scorecard.json, a table.

Card layout (``scorecard.json``)::

    {"format": "sftlab.scorecard/1", "has_base": bool, "elapsed_s": float,
     "tasks": [{"name", "kind", "role", "path", "data_sha256", "limit", "n_items", "headline": [metric],
                "metrics": {metric: {"model", "base", "delta", "ci95": [lo, hi], "p_value", "test",
                                     "gained", "lost", "verdict", "higher_is_better", "n"}},
                "extras": {...}, "elapsed_s"}],
     "summary": {"specialty": {"better": [...], "worse": [...], "no significant change": [...]},
                 "versatility": {...}}}

Without a base, ``base`` / ``delta`` / ``ci95`` / ``p_value`` / ``verdict`` are null. Perplexity tasks
report ``perplexity`` (per-window NLLs are the paired items; delta and CI are on perplexity itself) and,
with a base of the same tokenizer, ``kl_to_base`` (base 0, verdict "n/a": a drift measure, not a score)
and ``extras.cross_entropy_to_base``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from sftlab.config import TaskConfig
from sftlab.console import show
from sftlab.eval.base_cache import BaseCache
from sftlab.eval.harness import evaluate_harness_task
from sftlab.eval.items import hash_file
from sftlab.eval.kinds import GEN_METRICS, kind_of  # noqa: F401 (GEN_METRICS: read by eval users)

FORMAT = "sftlab.scorecard/1"
VERDICTS = ("better", "worse", "no significant change")


def _log(progress: bool, message: str) -> None:
    if progress:
        show(f"[eval] {message}", stderr=True, highlight=False, markup=False)


def evaluate_task(
    model,
    tokenizer,
    task: TaskConfig,
    *,
    base_model=None,
    base_tokenizer=None,
    batch_size: int = 32,
    bootstrap_samples: int = 2000,
    progress: bool = True,
    keep_items: bool = False,
    base_cache: BaseCache | None = None,
) -> dict:
    """The scorecard entry of one task (see the module doc); ``keep_items`` adds ``items`` (see
    ``item_values``); ``base_cache`` reuses the base's scores of an identical earlier call (``eval.base_cache``)."""
    t0 = time.perf_counter()
    if task.kind == "lm_eval":
        metrics, extras = evaluate_harness_task(model, tokenizer, task, base_model=base_model,
                                                base_tokenizer=base_tokenizer, batch_size=batch_size,
                                                bootstrap_samples=bootstrap_samples)
        _log(progress, f"{task.name} (lm_eval): {extras.get('skipped') or f'{len(metrics)} metrics'}")
        return {"name": task.name, "kind": task.kind, "role": task.role, "path": task.path, "data_sha256": None,
                "limit": task.limit, "n_items": None, "headline": list(metrics), "metrics": metrics,
                "extras": extras, "elapsed_s": round(time.perf_counter() - t0, 3)}
    kind = kind_of(task)
    scored = kind.score_pair(model, tokenizer, base_model, base_tokenizer or tokenizer, task, kind.load(task),
                             batch_size, base_cache)  # fmt: skip
    metrics, res, base_res = kind.compare(scored, task, bootstrap_samples), scored.model, scored.base
    extras = scored.extras
    headline = [m for m in kind.headline(task) if m in metrics]
    elapsed = time.perf_counter() - t0
    _log(
        progress,
        f"{task.name} ({task.kind}, {scored.n} items): "
        + ", ".join(f"{m} {metrics[m]['model']:.4g}" for m in headline)
        + f"  [{elapsed:.1f} s]",
    )
    entry = {
        "name": task.name,
        "kind": task.kind,
        "role": task.role,
        "path": task.path,
        "data_sha256": hash_file(task.path),
        "limit": task.limit,
        "n_items": scored.n,
        "headline": headline,
        "metrics": metrics,
        "extras": extras,
        "elapsed_s": round(elapsed, 3),
    }
    if keep_items:
        entry["items"] = {"model": kind.item_values(task, res),
                          "base": kind.item_values(task, base_res) if base_res else None}  # fmt: skip
    return entry


def item_values(task: TaskConfig, res: dict) -> dict[str, list[float]]:
    """Per-item values behind the headline metrics, in item order (``kinds.Kind.item_values``)."""
    return kind_of(task).item_values(task, res)


def summarize_verdicts(tasks: list[dict]) -> dict:
    """role -> verdict -> ["task.metric", ...] over the headline metrics that have a verdict."""
    out: dict[str, dict[str, list[str]]] = {}
    for t in tasks:
        side = out.setdefault(t["role"], {v: [] for v in VERDICTS})
        for m in t["headline"]:
            verdict = t["metrics"][m]["verdict"]
            if verdict in side:
                side[verdict].append(f"{t['name']}.{m}")
    return out


def evaluate_model(
    model,
    tokenizer,
    tasks: Sequence[TaskConfig],
    *,
    base_model=None,
    base_tokenizer=None,
    batch_size: int = 32,
    bootstrap_samples: int = 2000,
    progress: bool = True,
    keep_items: bool = False,
    base_cache: BaseCache | None = None,
) -> dict:
    """Score ``model`` (and ``base_model`` when given) on every task; the scorecard dict (module doc).

    ``base_tokenizer`` defaults to ``tokenizer``. Models are put in eval mode; nothing is trained.
    """
    t0 = time.perf_counter()
    entries = [
        evaluate_task(
            model,
            tokenizer,
            t,
            base_model=base_model,
            base_tokenizer=base_tokenizer,
            batch_size=batch_size,
            bootstrap_samples=bootstrap_samples,
            progress=progress,
            keep_items=keep_items,
            base_cache=base_cache,
        )
        for t in tasks
    ]
    return {
        "format": FORMAT,
        "has_base": base_model is not None,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "tasks": entries,
        "summary": summarize_verdicts(entries),
    }


def evaluate_for_config(eval_cfg, model, tokenizer, *, base_model=None, base_tokenizer=None,
                        progress: bool = True, keep_items: bool | None = None) -> dict:
    """``evaluate_model`` on an ``EvalConfig``'s tasks, batch size, bootstrap samples and precision.

    Chat tasks render the base's prompts with the model's chat template (the one it was trained with), so
    both are scored on the same text: ``base_tokenizer.chat_template`` is set to it.
    """
    if base_tokenizer is not None and tokenizer.chat_template and any(t.chat for t in eval_cfg.tasks):
        base_tokenizer.chat_template = tokenizer.chat_template
    with ExitStack() as stack:
        if eval_cfg.precision == "bf16":  # every device involved, so model and base are scored alike
            devices = {next(m.parameters()).device.type for m in (model, base_model) if m is not None}
            for device in sorted(devices):
                stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
        card = evaluate_model(model, tokenizer, eval_cfg.tasks, base_model=base_model, base_tokenizer=base_tokenizer,
                              batch_size=eval_cfg.batch_size, bootstrap_samples=eval_cfg.bootstrap_samples,
                              progress=progress,
                              keep_items=eval_cfg.keep_items if keep_items is None else keep_items,
                              base_cache=BaseCache(Path(eval_cfg.base_cache), eval_cfg.precision)
                              if eval_cfg.base_cache else None)
    card["precision"] = eval_cfg.precision
    return card


def flatten_scorecard(card: dict) -> dict[str, float]:
    """``{"eval/<task>/<metric>": model value}`` for every metric: a metrics.jsonl line during training."""
    return {f"eval/{t['name']}/{m}": v["model"] for t in card["tasks"] for m, v in t["metrics"].items()}


def _finite_or_none(x):
    """JSON has no NaN / inf: such values become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def write_scorecard(card: dict, path: str | Path) -> Path:
    """Write the card as indented JSON (strict: no NaN) to ``path``; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_finite_or_none(card), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return p


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_delta(m: dict) -> str:
    """``+0.0321 [+0.012, +0.051]``; just the delta without an interval; ``-`` without a base."""
    if m.get("delta") is None:
        return "-"
    ci = m.get("ci95")
    if not ci or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])):
        return f"{m['delta']:+.4g}"
    return f"{m['delta']:+.4g} [{ci[0]:+.3g}, {ci[1]:+.3g}]"


def headline_rows(card: dict) -> list[tuple[str, ...]]:
    """(task metric, side, base, model, delta [CI], verdict) for each task's headline metrics."""
    rows = []
    for t in card["tasks"]:
        for name in t["headline"]:
            m = t["metrics"][name]
            rows.append((f"{t['name']} {name}", t["role"], _fmt(m.get("base")), _fmt(m.get("model")),
                         format_delta(m), m.get("verdict") or "-"))
    return rows


def format_scorecard(card: dict, headline_only: bool = False):
    """A rich Table, one row per metric: task, role, metric, n, base, model, delta [95% CI], p, verdict.

    ``headline_only``: one row per task headline metric, fewer columns (fits an 80-column terminal).
    """
    from rich.table import Table

    styles = {"better": "green", "worse": "red"}
    title = "sftlab scorecard" + (": model vs base" if card.get("has_base") else "")
    if headline_only:
        table = Table(title=title)
        for col in ("metric", "side", "base", "model", "change [95% CI]", "verdict"):
            table.add_column(col, justify="right" if col in ("base", "model") else "left")
        for row in headline_rows(card):
            style = styles.get(row[-1])
            table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]" if style else row[-1])
        return table
    table = Table(title=title)
    for col in ("task", "role", "metric", "n", "base", "model", "delta [95% CI]", "p", "verdict"):
        table.add_column(col, justify="right" if col in ("n", "base", "model", "p") else "left")
    for t in card["tasks"]:
        for name, m in t["metrics"].items():
            verdict = m.get("verdict") or "-"
            style = styles.get(verdict)
            table.add_row(
                t["name"],
                t["role"],
                name,
                str(m.get("n", "")),
                _fmt(m.get("base")),
                _fmt(m.get("model")),
                format_delta(m),
                _fmt(m.get("p_value")),
                f"[{style}]{verdict}[/]" if style else verdict,
            )
    return table
