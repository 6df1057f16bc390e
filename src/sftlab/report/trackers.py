"""Experiment trackers (``train.report_to``): TensorBoard, trackio, Weights & Biases, MLflow; all off by default.

``metrics.jsonl`` stays the source of truth: a follower thread reads the lines the training loop appends
and forwards each new step to the trackers. Every tracker call (start, log, finish) runs in that one
thread, so trackers that keep per-thread state see a single thread. A tracker that fails while logging
is reported once on stderr and dropped; training goes on (its metrics are in metrics.jsonl either way).

In a staged run the run's metrics.jsonl is written at the end of each stage, so trackers receive a
stage's steps when it finishes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from sftlab.config import Config, ConfigError, to_dict
from sftlab.console import warn

# tracker -> (module that must be importable, pip extra of sftlab)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "trackio": ("trackio", "trackio"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_trackers(names) -> None:
    """A ``ConfigError`` naming the pip extra for the first tracker that is not installed."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"train.report_to: {name} is not installed; install it with: pip install 'sftlab[{extra}]' "
                f"(or remove {name} from train.report_to)"
            )


def scalars(record: dict) -> dict[str, float]:
    """The numeric values of a metrics line, without ``step`` (the x axis of every tracker)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def flat_config(cfg: Config) -> dict[str, str | float | int | bool]:
    """``{"train.lr": 2e-5, "data.sources.0.path": ...}``: a flat, tracker-friendly view of the config."""
    out = {}

    def walk(x, prefix):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
            for i, v in enumerate(x):
                walk(v, f"{prefix}{i}.")
        else:
            out[prefix[:-1]] = x if isinstance(x, (str, int, float, bool)) else json.dumps(x)

    walk(to_dict(cfg), "")
    return out


class TensorBoardTracker:
    """Scalars under ``OUTPUT/tensorboard`` (``tensorboard --logdir OUTPUT/tensorboard``), the config as text."""

    def __init__(self, cfg: Config, out: Path, run_name: str):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: shown as code

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, cfg: Config, out: Path, run_name: str):
        import wandb

        self.run = wandb.init(project=cfg.train.project, name=run_name, config=to_dict(cfg), dir=str(out))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in experiment ``train.project`` (tracking URI from ``MLFLOW_TRACKING_URI``, else ./mlruns)."""

    def __init__(self, cfg: Config, out: Path, run_name: str):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        exp = self.client.get_experiment_by_name(cfg.train.project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.train.project)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in flat_config(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items() if math.isfinite(v)]
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    def __init__(self, cfg: Config, out: Path, run_name: str):
        import trackio

        self.trackio = trackio
        trackio.init(project=cfg.train.project, name=run_name, config=to_dict(cfg))

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker, "trackio": TrackioTracker}


class MetricsFollower(threading.Thread):
    """Forwards new lines of ``metrics.jsonl`` to trackers (opened, fed and closed in this thread)."""

    def __init__(self, path: Path, openers: dict, interval_s: float = 2.0):
        super().__init__(name="sftlab-trackers", daemon=True)
        self.path, self.openers, self.interval_s = path, openers, interval_s
        self.trackers: dict = {}
        self.error: tuple[str, BaseException] | None = None
        self.ready, self.done = threading.Event(), threading.Event()
        self.offset, self.inode, self.last_step = 0, None, 0
        self.sent = 0  # lines forwarded (tests, the closing message)

    def run(self) -> None:
        for name, opener in self.openers.items():
            try:
                self.trackers[name] = opener()
            except Exception as e:  # noqa: BLE001 - any failure to start is reported to the caller
                self.error = (name, e)
                break
        self.ready.set()
        if self.error:
            self._close()
            return
        while not self.done.wait(self.interval_s):
            self.pump()
        self.pump()
        self._close()

    def pump(self) -> None:
        """Forward the complete lines appended since the last call (a rewritten file is re-read, steps deduped)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset = st.st_ino, 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or step <= self.last_step:
                continue
            self.last_step = step
            self.sent += 1
            for name in list(self.trackers):
                try:
                    self.trackers[name].log(scalars(record), step)
                except Exception as e:  # noqa: BLE001 - a tracker must not stop training
                    warn(
                        f"tracker {name} failed at step {step} and is turned off ({e}); metrics.jsonl has every value",
                        stderr=True,
                    )
                    self.trackers.pop(name)

    def _close(self) -> None:
        for name, tracker in self.trackers.items():
            try:
                tracker.close()
            except Exception as e:  # noqa: BLE001
                warn(f"tracker {name} did not close cleanly ({e})", stderr=True)

    def stop(self) -> None:
        self.done.set()
        self.join()


@contextmanager
def follow_metrics(cfg: Config, out: Path, enabled: bool = True, interval_s: float = 2.0):
    """Feed ``OUTPUT/metrics.jsonl`` to the trackers of ``train.report_to`` while the block runs."""
    names = tuple(dict.fromkeys(cfg.train.report_to))
    if not names or not enabled:
        yield None
        return
    check_trackers(names)
    run_name = cfg.train.run_name or Path(cfg.output.dir).resolve().name
    openers = {n: (lambda n=n: OPENERS[n](cfg, out, run_name)) for n in names}
    follower = MetricsFollower(out / "metrics.jsonl", openers, interval_s)
    follower.start()
    follower.ready.wait()
    if follower.error:
        follower.join()
        name, err = follower.error
        raise ConfigError(f"train.report_to: could not start {name}: {type(err).__name__}: {err}")
    try:
        yield follower
    finally:
        follower.stop()
