"""Trackers: TensorBoard for real (its event files hold what metrics.jsonl holds); W&B, MLflow and trackio
through fake modules that record the calls (the real packages are not installed here)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
from report_helpers import read_metrics

from sftlab.config import ConfigError, load_config
from sftlab.report.trackers import MetricsFollower, check_trackers, follow_metrics


def test_tensorboard_holds_every_metrics_value(real_runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(real_runs.a / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    metrics = read_metrics(real_runs.a)
    keys = {k for m in metrics for k in m if k != "step"}
    assert set(acc.Tags()["scalars"]) == keys
    for key in keys:
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        expected = [(m["step"], m[key]) for m in metrics if key in m]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key  # float32 in TB
    assert "config/text_summary" in acc.Tags()["tensors"]


class Recorder:
    def __init__(self):
        self.calls = []


def fake_module(name: str, monkeypatch, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


@pytest.fixture()
def fakes(monkeypatch):
    rec = Recorder()

    class WandbRun:
        def log(self, values, step):
            rec.calls.append(("wandb.log", step, values))

        def finish(self):
            rec.calls.append(("wandb.finish",))

    def wandb_init(project, name, config, dir):
        rec.calls.append(("wandb.init", project, name, config["train"]["lr"]))
        return WandbRun()

    fake_module("wandb", monkeypatch, init=wandb_init)

    fake_module(
        "trackio",
        monkeypatch,
        init=lambda project, name, config: rec.calls.append(("trackio.init", project, name)),
        log=lambda values, step: rec.calls.append(("trackio.log", step, values)),
        finish=lambda: rec.calls.append(("trackio.finish",)),
    )

    class Client:
        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            rec.calls.append(("mlflow.experiment", name))
            return "7"

        def create_run(self, exp_id, run_name):
            rec.calls.append(("mlflow.run", exp_id, run_name))
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

        def log_batch(self, run_id, metrics=(), params=()):
            if params:
                rec.calls.append(("mlflow.params", len(params)))
            if metrics:
                rec.calls.append(("mlflow.log", metrics[0].step, {m.key: m.value for m in metrics}))

        def set_terminated(self, run_id):
            rec.calls.append(("mlflow.end", run_id))

    fake_module("mlflow", monkeypatch)
    fake_module("mlflow.tracking", monkeypatch, MlflowClient=Client)
    fake_module(
        "mlflow.entities",
        monkeypatch,
        Metric=lambda key, value, timestamp, step: types.SimpleNamespace(key=key, value=value, step=step),
        Param=lambda key, value: (key, value),
    )
    return rec


def test_wandb_mlflow_trackio_get_every_step_once(tmp_path, fakes):
    cfg = load_config(
        None,
        [
            "train.report_to=[wandb, mlflow, trackio]",
            "train.project=proj",
            f"output.dir={tmp_path / 'myrun'}",
            "train.lr=0.5",
        ],
    )
    out = tmp_path / "myrun"
    out.mkdir()
    path = out / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / s, "lr": 0.5, "eval/sst/accuracy": 0.25 * s} for s in (1, 2, 3)]
    with follow_metrics(cfg, out, interval_s=3600) as follower:  # the thread pumps once more when the block ends
        with open(path, "a") as f:
            f.write(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]) + "\n" + '{"step": 3, "lo')  # 3 is half-written
            f.flush()
            follower.pump()
            f.write(json.dumps(lines[2])[len('{"step": 3, "lo') :] + "\n")
    assert follower.sent == 3
    logged = {
        name: [(c[1], c[2]) for c in fakes.calls if c[0] == f"{name}.log"] for name in ("wandb", "mlflow", "trackio")
    }
    expected = [(x["step"], {k: v for k, v in x.items() if k != "step"}) for x in lines]
    assert logged == {"wandb": expected, "mlflow": expected, "trackio": expected}
    names = [c[0] for c in fakes.calls]
    assert ("wandb.init", "proj", "myrun", 0.5) in fakes.calls and ("trackio.init", "proj", "myrun") in fakes.calls
    assert ("mlflow.experiment", "proj") in fakes.calls and ("mlflow.run", "7", "myrun") in fakes.calls
    assert names[-3:] == ["wandb.finish", "mlflow.end", "trackio.finish"]  # closed once the block ends


def test_a_failing_tracker_is_dropped_with_a_warning(tmp_path, capsys):
    class Broken:
        def log(self, values, step):
            raise RuntimeError("network down")

        def close(self):
            pass

    class Good:
        steps = []

        def log(self, values, step):
            self.steps.append(step)

        def close(self):
            pass

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2)))
    follower = MetricsFollower(path, {"broken": Broken, "good": Good}, interval_s=0.05)
    follower.start()
    follower.ready.wait()
    follower.stop()
    assert Good.steps == [1, 2] and follower.sent == 2
    assert "warning: tracker broken failed at step 1 and is turned off (network down)" in capsys.readouterr().err


def test_missing_tracker_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb is not installed; install it with: pip install 'sftlab\[wandb\]'"):
        check_trackers(("tensorboard", "wandb"))


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="'tensorbord' is not allowed.*did you mean 'tensorboard'"):
        load_config(None, ["train.report_to=[tensorbord]"])


def test_tracker_that_cannot_start_stops_the_run_before_training(tmp_path, monkeypatch):
    def boom(**kwargs):
        raise PermissionError("not logged in")

    fake_module("wandb", monkeypatch, init=boom)
    cfg = load_config(None, ["train.report_to=[wandb]", f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="could not start wandb: PermissionError: not logged in"):
        with follow_metrics(cfg, tmp_path):
            pass
