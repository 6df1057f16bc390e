"""``sftlab runs [DIR]``: the run directories under a folder, one line each (status, steps, losses, scorecard)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftlab.report.rundir import RunData, find_runs, headline, load_run
from sftlab.report.svg import format_number


def run_row(run: RunData, root: Path) -> dict:
    """One run as plain values (the ``--json`` output and the table's cells)."""
    s = run.summary or {}
    try:
        name = str(run.path.relative_to(root)) if run.path != root else run.path.name
    except ValueError:
        name = str(run.path)
    heads = [h for h in headline(run.scorecard) if h["metric"] != "kl_to_base"]
    return {
        "run": name,
        "status": run.status,
        "step": run.last_step,
        "steps": run.total_steps,
        "checkpoint": run.checkpoint_steps[-1] if run.checkpoint_steps else None,
        "train_loss": run.last_value("loss"),
        "eval_loss": run.last_value("eval_loss"),
        "train_time_s": s.get("train_time_s", run.last_value("elapsed_s")),
        "scorecard": [
            {k: h[k] for k in ("task", "metric", "role", "base", "model", "delta", "verdict")} for h in heads
        ],
    }


def headline_text(row: dict) -> str:
    parts = []
    for h in row["scorecard"]:
        change = (
            f" ({'+' if h['delta'] >= 0 else ''}{format_number(h['delta'])} {h['verdict']})"
            if h.get("delta") is not None
            else ""
        )
        parts.append(f"{h['task']}.{h['metric']} {format_number(h['model'])}{change}")
    return "; ".join(parts) or "-"


def steps_text(row: dict) -> str:
    text = "-" if row["step"] is None else f"{row['step']:,}"
    if row["steps"]:
        text += f"/{row['steps']:,}"
    if row["status"] == "stopped" and row["checkpoint"]:
        text += f" (ckpt {row['checkpoint']:,})"
    return text


def runs_table(rows: list[dict], root: Path, headline_column: bool = True):
    """The rich table; without ``headline_column`` the scorecard headlines are left for lines below it."""
    from rich.table import Table

    styles = {"done": "green", "running": "cyan", "stopped": "yellow"}
    table = Table(title=f"runs under {root}")
    cols = ["run", "status", "steps", "train loss", "eval loss", "time s"]
    for col in cols + (["scorecard headline (change)"] if headline_column else []):
        table.add_column(col, justify="right" if col in ("train loss", "eval loss", "time s") else "left")
    for r in rows:
        style = styles.get(r["status"])
        cells = [
            r["run"],
            f"[{style}]{r['status']}[/]" if style else r["status"],
            steps_text(r),
            format_number(r["train_loss"]),
            format_number(r["eval_loss"]),
            format_number(r["train_time_s"], 2),
        ]
        table.add_row(*cells, *([headline_text(r)] if headline_column else []))
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default="runs", help="folder to search for run directories (default: runs)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")


def run(args: argparse.Namespace) -> int:
    from sftlab.console import console, say, show

    root = Path(args.dir)
    rows = [run_row(load_run(p), root) for p in find_runs(root)]
    if args.json:
        for r in rows:
            say(json.dumps(r))
        return 0
    if not rows:
        show(f"no run directories under {root} (a run directory holds config.yaml and metrics.jsonl)")
        return 0
    wide = console().width >= 150  # a headline column fits; else one line per run below the table
    show(runs_table(rows, root, headline_column=wide))
    if not wide:
        for r in rows:
            if r["scorecard"]:
                show(f"{r['run']}: {headline_text(r)}", highlight=False)
    done = sum(r["status"] == "done" for r in rows)
    show(f"{len(rows)} run{'s' if len(rows) != 1 else ''}: {done} done, {len(rows) - done} not finished")
    return 0
