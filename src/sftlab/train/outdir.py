"""The run directory is never destroyed by accident.

- A fresh run (``train.resume: none``) into a folder that holds a previous run (checkpoints or ``final/``) is
  refused with the two ways out: ``train.resume: auto`` continues it, ``output.overwrite: true`` starts over.
  The overwrite wipe is explicit and logged, and happens only once the data and the model have loaded, so a run
  that fails early leaves the previous one intact.
- ``.lock`` (pid, host, time) keeps a second run out of a folder in use; a lock whose process is gone (same
  host) is stale and taken over with a note.
- A resumed run keeps its ``config.yaml``. What changed since is printed and appended to
  ``config_changes.jsonl``; changes that make the resumed run a different run (data, model, batch, seed) are
  refused, since the checkpoint's data order and weights belong to the old values.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from sftlab.config import Config, ConfigError, save_config, to_dict
from sftlab.files import pid_alive

LOCK = ".lock"
CONFIG = "config.yaml"
CHANGES = "config_changes.jsonl"
# What a fresh run with output.overwrite removes: the previous run's trained state and its records.
PREVIOUS = ("checkpoints", "stages", "final", "final.tmp", "merged", "merged.tmp", "metrics.jsonl", "summary.json",
            "scorecard.json", "samples.jsonl", CHANGES)
# Config keys whose change makes a resume a different run: refused (prefixes of dotted keys).
FIXED_ON_RESUME = ("model.", "lora.", "select.", "data.", "stages", "dmt.", "train.seed", "train.micro_batch_size",
                   "train.grad_accum", "train.precision", "eval.split_ratio", "eval.file", "eval.max_records")
# Keys that say how a run is watched, not what it computes: never reported as changes.
NOT_COMPARED = ("train.resume", "train.progress", "train.report_to", "train.run_name", "train.project",
                "output.", "eval.tasks", "eval.every_steps", "eval.samples", "eval.sample_max_new_tokens",
                "eval.batch_size", "eval.bootstrap_samples", "eval.compare_base", "eval.keep_items", "eval.precision",
                "data.cache_dir", "data.num_proc", "data.skipped_file")


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def previous_run(out: Path) -> list[str]:
    """What of a previous run ``out`` holds: its checkpoints and ``final/`` (empty when none)."""
    found = []
    for ckpts in [out / "checkpoints", *sorted((out / "stages").glob("*/checkpoints"))]:  # staged runs: per stage
        if ckpts.is_dir():
            rel = ckpts.relative_to(out)
            found += sorted(f"{rel}/{p.name}" for p in ckpts.iterdir() if p.name.startswith("step-"))
    if (out / "final").is_dir():
        found.append("final/")
    return found


def make_output_dir(out: Path) -> None:
    """``out`` as a writable folder, or a ConfigError that says why not."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output.dir {out}: {parent} is a file, not a folder; pick another output.dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output.dir {out} is not writable ({e.strerror or e}); pick another output.dir or fix "
                          "its permissions") from None


def check_fresh_start(cfg: Config, out: Path) -> None:
    """Refuse a fresh run into a folder holding a previous run unless ``output.overwrite`` says to replace it."""
    if cfg.train.resume != "none" or cfg.output.overwrite:
        return
    found = previous_run(out)
    if found:
        shown = ", ".join(found[-3:]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(f"{out} already holds a run ({shown}). Continue it with --set train.resume=auto, start "
                          f"over with --set output.overwrite=true (deletes them once data and model have loaded), "
                          f"or pick another output.dir")


def _lock_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def output_lock(out: Path):
    """Hold ``out/.lock`` for the run (main process only); a second run on the same folder is refused."""
    if not is_main_process():
        yield
        return
    path = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            stale = owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not pid_alive(owner["pid"])
            if stale or owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                print(f"note: {path} was left by a run that is gone (pid {owner.get('pid')}); taking it over")
                path.unlink(missing_ok=True)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0)))
            raise ConfigError(f"{out} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                              f"since {since}). Wait for it to end, pick another output.dir, or delete {path} if "
                              "that run is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    try:
        yield
    finally:
        if _lock_owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def clear_previous_run(out: Path) -> list[str]:
    """The ``output.overwrite`` wipe: remove ``PREVIOUS`` from ``out``; returns what was removed."""
    removed = []
    for name in PREVIOUS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _flatten(data, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(saved: dict, current: dict) -> dict[str, tuple[object, object]]:
    """``{dotted key: (saved, current)}`` for every compared key whose value differs."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k) and not k.startswith(NOT_COMPARED)}


def check_resume_config(cfg: Config, out: Path) -> None:
    """On resume: keep ``config.yaml``; print and record what changed; refuse changes that break the resume."""
    path = out / CONFIG
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return
    changes = config_changes(saved, to_dict(cfg))
    if not changes:
        return
    fixed = {k: v for k, v in changes.items() if k.startswith(FIXED_ON_RESUME)}
    if fixed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(fixed.items())[:4])
        raise ConfigError(f"cannot resume {out} with changed {shown}: the checkpoint's data order and weights "
                          "belong to the saved values (config.yaml). Set them back, or start a new run in another "
                          "output.dir")
    for k, (a, b) in changes.items():
        print(f"note: resuming with {k} changed: {a!r} -> {b!r} (config.yaml keeps the original; "
              f"recorded in {CHANGES})")
    if is_main_process():
        with open(out / CHANGES, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), "changes": {k: list(v) for k, v in changes.items()}},
                               default=str) + "\n")


def resumes(cfg: Config, out: Path) -> bool:
    """Whether this run continues a checkpoint in ``out`` (``auto`` with none there starts fresh)."""
    if cfg.train.resume == "none":
        return False
    return cfg.train.resume != "auto" or any("checkpoints/" in x for x in previous_run(out))


def prepare_output_dir(cfg: Config) -> Path:
    """Checks before any work: a writable folder, no previous run to lose, a resume that stays the same run."""
    out = Path(cfg.output.dir)
    make_output_dir(out)
    check_fresh_start(cfg, out)
    if resumes(cfg, out):
        check_resume_config(cfg, out)
    return out


def start_run(cfg: Config, out: Path) -> None:
    """Once data and model have loaded: the overwrite wipe (logged) of a fresh run, and its ``config.yaml``."""
    if not is_main_process():
        return
    if cfg.train.resume == "none":
        removed = clear_previous_run(out)
        if removed:
            print(f"output.overwrite: removed the previous run's {', '.join(removed)} from {out}")
    if not resumes(cfg, out) or not (out / CONFIG).is_file():
        save_config(cfg, out / CONFIG)
