"""What a run needs around its loop: the metrics file, the progress bar, stop signals, and the errors that
stop a run on purpose (with their exit codes)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from sftlab.console import is_main_process, say
from sftlab.train.checkpoint import is_valid


class MetricsWriter:
    """Append-only ``metrics.jsonl``: one JSON object per logged step (flushed, so it is readable live)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def progress_bar(enabled: bool):
    """The training progress bar; shown only when ``enabled`` and on the main process."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not (enabled and is_main_process()),
    )


try:  # what writing weights can raise: OS errors, and safetensors' own on a short write (a full disk)
    from safetensors import SafetensorError

    WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, SafetensorError)
except ImportError:  # older safetensors
    WRITE_ERRORS = (OSError,)


class TrainingStopped(Exception):
    """The run stopped early on purpose; ``exit_code`` tells why (3 signal, 4 non-finite, 5 disk)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    """First SIGINT / SIGTERM: finish the step, checkpoint, exit. Second SIGINT: stop at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C interrupts at once
        say(f"\n{self.signal_name}: finishing this step, then saving a checkpoint (Ctrl+C again to quit now)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def write_problem(e: Exception, where: Path) -> str:
    """One line on a failed write: the error's first line and the space left where it wrote."""
    import shutil

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
        return f"{first}; {free / 2**20:,.0f} MiB free on that disk"
    except OSError:
        return first


def checked_checkpoint(ckpt: Path) -> Path:
    """A checkpoint named by ``train.resume: PATH``, verified like ``auto`` verifies (manifest + checksums)."""
    if not ckpt.is_dir():
        raise TrainingStopped(f"train.resume: no checkpoint at {ckpt}", 2)
    if not is_valid(ckpt):
        raise TrainingStopped(f"train.resume: {ckpt} fails verification (manifest missing or a file's sha256 "
                              "differs: damaged or half-written). Give another checkpoint, or train.resume=auto "
                              "for the newest valid one", 2)
    return ckpt


def restore_metrics(path: Path, step: int) -> None:
    """Keep only the metrics lines up to ``step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
