"""The run directory is never destroyed by accident.

- A fresh run into a folder that holds a previous run (checkpoints, ``final/``, a summary or scorecard) is
  refused with the ways out: ``train.resume: auto`` continues it (offered when a checkpoint is there),
  ``output.overwrite: true`` starts over. The overwrite wipe is explicit and logged, and happens only once the
  data and the model have loaded, so a run that fails early leaves the previous one intact. ``resume: auto``
  with no checkpoint to continue is a fresh run and is checked the same way.
- ``.lock`` holds an exclusive ``flock`` for the whole run (the kernel releases it when the process dies, so a
  killed run leaves no stale lock); a second run on the folder is refused, naming the holder.
- A resumed run keeps its ``config.yaml``. What changed since is printed and appended to
  ``config_changes.jsonl``; changes that make the resumed run a different run (data, model, batch, seed) are
  refused, since the checkpoint's data order and weights belong to the old values. Keys the saved config does
  not have (added by a newer sftlab) are not compared; paths are compared resolved.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from sftlab.config import Config, ConfigError, save_config, to_dict
from sftlab.console import is_main_process, say
from sftlab.files import pid_alive
from sftlab.train.checkpoint import MANIFEST  # a checkpoint folder holding it is sealed (complete)

LOCK = ".lock"
CONFIG = "config.yaml"
CHANGES = "config_changes.jsonl"
# What output.overwrite removes: the previous run's trained state and its records.
PREVIOUS = ("checkpoints", "stages", "final", "final.tmp", "merged", "merged.tmp", "metrics.jsonl", "summary.json",
            "scorecard.json", "samples.jsonl", CHANGES)
# What a fresh run removes without overwrite: records of a run that left nothing of value (killed early).
STALE = ("metrics.jsonl", "stages", CHANGES)
# Config keys whose change makes a resume a different run: refused (prefixes of dotted keys).
FIXED_ON_RESUME = ("model.", "lora.", "select.", "data.", "stages", "dmt.", "train.seed", "train.micro_batch_size",
                   "train.grad_accum", "train.precision", "eval.split_ratio", "eval.file", "eval.max_records")
# Keys that say how a run is watched or run, not what it computes: never reported as changes.
NOT_COMPARED = ("train.resume", "train.progress", "train.report_to", "train.run_name", "train.project",
                "output.", "eval.tasks", "eval.every_steps", "eval.samples", "eval.sample_max_new_tokens",
                "eval.batch_size", "eval.bootstrap_samples", "eval.compare_base", "eval.keep_items", "eval.precision",
                "data.cache_dir", "data.num_proc", "data.skipped_file", "data.on_error", "data.warn_removed_share",
                "model.gradient_checkpointing", "model.attn_implementation", "lora.merge_on_save")


def sealed_checkpoints(out: Path) -> list[str]:
    """Checkpoints of a previous run that are complete (sealed by their manifest), also per stage."""
    found = []
    for ckpts in [out / "checkpoints", *sorted((out / "stages").glob("*/checkpoints"))]:
        if ckpts.is_dir():
            rel = ckpts.relative_to(out)
            found += sorted(f"{rel}/{p.name}" for p in ckpts.iterdir()
                            if p.name.startswith("step-") and (p / MANIFEST).is_file())
    return found


def resumable(out: Path) -> bool:
    """Whether ``out`` holds something ``resume: auto`` continues: a sealed checkpoint or a finished stage."""
    return bool(sealed_checkpoints(out)) or any((out / "stages").glob("*/done.json"))


def previous_run(out: Path) -> list[str]:
    """What of a previous run ``out`` holds: its checkpoints, ``final/``, summary and scorecard."""
    found = sealed_checkpoints(out)
    found += [name for name in ("final/", "summary.json", "scorecard.json") if (out / name.rstrip("/")).exists()]
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
    if cfg.output.overwrite:
        return
    found = previous_run(out)
    if found:
        shown = ", ".join(found[-3:]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        resume = ("Continue it with --set train.resume=auto, start" if resumable(out)
                  else "It has no checkpoint to continue. Start")
        raise ConfigError(f"{out} already holds a run ({shown}). {resume} over with --set output.overwrite=true "
                          f"(deletes it once data and model have loaded), or pick another output.dir")


def _lock_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def output_lock(out: Path):
    """Hold an exclusive ``flock`` on ``out/.lock`` for the run (main process only); a second run on the same
    folder is refused. The file records the holder (pid, host, time) for that message; it stays after the run."""
    if not is_main_process():
        yield
        return
    path = out / LOCK
    before = _lock_owner(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(path)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("time") or 0)))
            raise ConfigError(f"{out} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                              f"since {since}). Wait for it to end, or pick another output.dir") from None
        pid = before.get("pid")
        if isinstance(pid, int) and before.get("host") == socket.gethostname() and not pid_alive(pid):
            say(f"note: the run that held {path} (pid {pid}) ended without finishing; taking the folder over")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def clear_previous_run(out: Path, names: tuple[str, ...]) -> list[str]:
    """Remove ``names`` from ``out``; returns what was there."""
    removed = []
    for name in names:
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
    """``{"a.b": 1, "a.c.0.d": 2}`` from nested mappings and lists (an empty one stays a value)."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data:
        items = enumerate(data)
    else:
        return {prefix[:-1]: data}
    out = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _same(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:  # the same path written two ways
        return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))
    return False


def config_changes(saved: dict, current: dict) -> dict[str, tuple[object, object]]:
    """``{dotted key: (saved, current)}`` for every compared key whose value differs; keys the saved config does
    not have (added since by a newer sftlab) are not compared."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(a) if not k.startswith(NOT_COMPARED) and not _same(a.get(k), b.get(k))}


def check_resume_config(cfg: Config, out: Path) -> None:
    """On resume: keep ``config.yaml``; print and record what changed; refuse changes that break the resume."""
    last = max((int(x.rsplit("step-", 1)[1]) for x in sealed_checkpoints(out) if x.startswith("checkpoints/")),
               default=0)
    if cfg.train.max_steps and cfg.train.max_steps < last:
        raise ConfigError(f"train.max_steps {cfg.train.max_steps} is below the step of the checkpoint to resume "
                          f"({last}): raise it, or start a new run")
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
    if not is_main_process():
        return
    for k, (a, b) in changes.items():
        say(f"note: resuming with {k} changed: {a!r} -> {b!r} (config.yaml keeps the original; "
              f"recorded in {CHANGES})")
    with open(out / CHANGES, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": round(time.time(), 3), "changes": {k: list(v) for k, v in changes.items()}},
                           default=str) + "\n")


def resumes(cfg: Config, out: Path) -> bool:
    """Whether this run continues a previous one (``auto`` with nothing resumable in ``out`` starts fresh)."""
    if cfg.train.resume == "none":
        return False
    return cfg.train.resume != "auto" or resumable(out)


def check_output_dir(cfg: Config, out: Path) -> None:
    """Checks before any work (under the lock): no previous run to lose, a resume that stays the same run."""
    if resumes(cfg, out):
        check_resume_config(cfg, out)
    else:
        check_fresh_start(cfg, out)


def start_run(cfg: Config, out: Path) -> None:
    """Once data and model have loaded: a fresh run removes the previous run (``output.overwrite``, logged) or
    the stale records of one that left nothing of value, and writes its ``config.yaml``."""
    if not is_main_process():
        return
    if not resumes(cfg, out):
        if cfg.output.overwrite:
            removed = clear_previous_run(out, PREVIOUS)
            if removed:
                say(f"output.overwrite: removed the previous run's {', '.join(removed)} from {out}")
        else:
            clear_previous_run(out, STALE)
    if not resumes(cfg, out) or not (out / CONFIG).is_file():
        save_config(cfg, out / CONFIG)
