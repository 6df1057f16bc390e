"""Read what a run wrote: config, metrics.jsonl, summary, data report, scorecard, samples, status.

Only reads; every file is optional (a run stopped early has metrics but no summary), so a report can be
made of a run at any stage. A scorecard file on its own (``sftlab eval --out card.json``) is a run with
only a scorecard.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sftlab.config import ConfigError
from sftlab.files import pid_alive

FORMAT = "sftlab.scorecard/1"
RUNNING_WINDOW_S = 300  # without a live process to ask: metrics written this recently means "running"


@dataclass
class RunData:
    path: Path
    name: str
    config: dict = field(default_factory=dict)
    config_text: str = ""
    metrics: list[dict] = field(default_factory=list)
    bad_metric_lines: int = 0  # lines of metrics.jsonl that are not JSON (a line cut by a crash)
    summary: dict | None = None
    data_report: dict | None = None
    scorecard: dict | None = None
    samples: list[dict] = field(default_factory=list)
    trainable: list[dict] = field(default_factory=list)
    status: str = "unknown"  # done | running | stopped | scorecard
    checkpoint_steps: list[int] = field(default_factory=list)

    @property
    def last_step(self) -> int | None:
        return self.metrics[-1]["step"] if self.metrics else None

    @property
    def total_steps(self) -> int | None:
        """Planned optimizer steps when known (from the summary, else ``train.max_steps``)."""
        if self.summary:
            return self.summary.get("steps")
        max_steps = self.config.get("train", {}).get("max_steps") or 0
        return max_steps or None

    def last_value(self, key: str):
        """The last logged value of ``key`` in metrics.jsonl (None when never logged)."""
        for rec in reversed(self.metrics):
            if rec.get(key) is not None:
                return rec[key]
        return None


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); was the file cut short?") from None


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of unreadable lines) of a metrics.jsonl; a cut last line is counted, not fatal."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_run_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "config.yaml").is_file()
        and any((path / f).is_file() for f in ("metrics.jsonl", "summary.json", "status.json"))
    )


def run_status(path: Path, has_summary: bool, now: float | None = None) -> str:
    """done (summary written) | running | stopped.

    A run that stopped on purpose says so in ``status.json``; otherwise ``status.json`` names the training process: on this host its liveness decides; elsewhere (a shared
    file system) a metrics file written in the last few minutes counts as running.
    """
    if has_summary:
        return "done"
    status = _read_json(path / "status.json") or {}
    if status.get("state") == "stopped":
        return "stopped"
    if status.get("state") == "running" and status.get("host") == socket.gethostname() and status.get("pid"):
        return "running" if pid_alive(int(status["pid"])) else "stopped"
    latest = max(
        (p.stat().st_mtime for p in (path / "metrics.jsonl", path / "status.json") if p.is_file()), default=0.0
    )
    return "running" if (now or time.time()) - latest < RUNNING_WINDOW_S else "stopped"


def load_run(path: str | Path) -> RunData:
    """Everything a run directory holds (or a lone scorecard JSON file), for reports and ``sftlab runs``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        card = _read_json(path)
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a scorecard ({FORMAT}); give a run directory or a scorecard.json")
        name = path.parent.name if path.stem == "scorecard" else path.stem
        return RunData(path=path, name=name, scorecard=card, status="scorecard")
    if not path.is_dir():
        raise ConfigError(f"run directory not found: {path}")
    if not is_run_dir(path):
        raise ConfigError(
            f"{path} is not a run directory (no config.yaml with metrics.jsonl or summary.json); "
            "give the output.dir of a training run"
        )
    config_text = (path / "config.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    metrics, bad = read_metrics(path / "metrics.jsonl")
    summary = _read_json(path / "summary.json")
    ckpts = (
        sorted(
            int(p.name.split("-")[-1]) for p in (path / "checkpoints").glob("step-*") if p.name.split("-")[-1].isdigit()
        )
        if (path / "checkpoints").is_dir()
        else []
    )
    return RunData(
        path=path,
        name=path.name,
        config=config,
        config_text=config_text,
        metrics=metrics,
        bad_metric_lines=bad,
        summary=summary,
        data_report=_read_json(path / "data_report.json"),
        scorecard=_read_json(path / "scorecard.json"),
        samples=read_jsonl(path / "samples.jsonl"),
        trainable=_read_json(path / "trainable_parameters.json") or [],
        status=run_status(path, summary is not None),
        checkpoint_steps=ckpts,
    )


def find_runs(root: str | Path, max_depth: int = 4) -> list[Path]:
    """Run directories under ``root`` (itself included), sorted by path; model and checkpoint folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"folder not found: {root}")
    found = []

    def walk(p: Path, depth: int) -> None:
        if is_run_dir(p):
            found.append(p)
            return
        if depth >= max_depth:
            return
        for child in sorted(p.iterdir()):
            if (
                child.is_dir()
                and not child.name.startswith(".")
                and child.name not in ("final", "checkpoints", "merged", "tensorboard")
            ):
                walk(child, depth + 1)

    walk(root, 0)
    return found


def headline(card: dict | None) -> list[dict]:
    """Scorecard headline metrics as dicts: task, metric, role, base, model, delta, ci95, verdict, higher."""
    if not card:
        return []
    rows = []
    for t in card.get("tasks", []):
        for m in t.get("headline", []):
            v = t["metrics"][m]
            rows.append(
                {
                    "task": t["name"],
                    "metric": m,
                    "role": t["role"],
                    "base": v.get("base"),
                    "model": v.get("model"),
                    "delta": v.get("delta"),
                    "ci95": v.get("ci95"),
                    "p_value": v.get("p_value"),
                    "verdict": v.get("verdict"),
                    "higher_is_better": v.get("higher_is_better", True),
                    "n": v.get("n"),
                }
            )
    return rows
