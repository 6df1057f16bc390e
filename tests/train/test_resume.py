"""Exact resume after SIGKILL, crash during a checkpoint write, and non-finite loss guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.train.checkpoint import find_latest_valid, is_valid

DRIVER = Path(__file__).with_name("train_driver.py")


def run(out: Path, *overrides: str, faults: str = "", check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, SFTLAB_FAULTS=faults)
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(out), *overrides], env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def assert_identical(a: Path, b: Path, after_step: int) -> None:
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 13))
    assert [la[s] for s in la if s > after_step] == [lb[s] for s in lb if s > after_step]  # bitwise
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def kill_after_checkpoint(out: Path, step: int, *overrides: str) -> None:
    """Start a run that sleeps after step `step + 1`, SIGKILL it once checkpoint `step` exists."""
    env = dict(os.environ, SFTLAB_FAULTS=f"sleep_after_step={step + 1}:120")
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(out), *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    target = out / "checkpoints" / f"step-{step:06d}" / "manifest.json"
    deadline = time.time() + 240
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


CASES = {
    "full": [],
    "lora": ["lora=1"],
    "packed_multisource": ["data.packing=true", "data.max_seq_len=48"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, case):
    extra = [*CASES[case], "train.save_every_steps=2", "train.keep_last=3"]
    run(tmp_path / "straight", *extra)
    killed = tmp_path / "killed"
    kill_after_checkpoint(killed, 4, *extra)
    proc = run(killed, *extra, "train.resume=auto")
    assert "resumed_from=" in proc.stdout and "step-000004" in proc.stdout
    assert_identical(tmp_path / "straight", killed, after_step=4)


def test_kill_while_writing_checkpoint_uses_previous(tmp_path):
    extra = ["train.save_every_steps=2"]
    run(tmp_path / "straight", *extra)
    out = tmp_path / "crashed"
    proc = run(out, *extra, faults="kill_in_checkpoint=6", check=False)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "step-000006.tmp").is_dir()  # the half-written one
    assert find_latest_valid(out / "checkpoints").name == "step-000004"
    proc = run(out, *extra, "train.resume=auto")
    assert "step-000004" in proc.stdout
    assert_identical(tmp_path / "straight", out, after_step=4)


def test_corrupted_checkpoint_is_ignored(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    run(out, "train.save_every_steps=2", "train.max_steps=6", "train.keep_last=5")
    ck = out / "checkpoints"
    assert is_valid(ck / "step-000004")
    with open(ck / "step-000004" / "trainable.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    assert not is_valid(ck / "step-000004")
    capsys.readouterr()
    assert find_latest_valid(ck).name == "step-000002"
    out_, err = capsys.readouterr()
    said = [line for line in (out_ + err).splitlines() if "step-000004" in line]
    assert said == [f"warning: ignoring checkpoint {ck / 'step-000004'}: fails verification (manifest missing or a "
                    "file's sha256 differs: damaged or half-written)"]  # once, not also as a log record
    assert not [r for r in caplog.records if "step-000004" in r.getMessage()]


def test_nan_at_one_step_is_skipped_and_reported(tmp_path):
    proc = run(tmp_path / "run", faults="nan_at_step=3")
    assert "skipped_steps=1" in proc.stdout
    assert "step 3: non-finite loss" in proc.stdout
    assert losses(tmp_path / "run")[3] != losses(tmp_path / "run")[3]  # NaN logged for the skipped step


def test_nan_every_step_stops_with_message_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run(out, "train.save_every_steps=2", "train.max_skipped_steps=3", faults="nan_from_step=5", check=False)
    assert proc.returncode == 4
    assert "stopped at step 7: 3 steps had a non-finite loss" in proc.stderr
    assert "sources ['a', 'b']" in proc.stderr or "sources ['a']" in proc.stderr or "sources ['b']" in proc.stderr
    assert is_valid(out / "checkpoints" / "step-000004")


def test_sigterm_finishes_step_saves_and_exits_3_then_resumes(tmp_path):
    run(tmp_path / "straight")
    out = tmp_path / "term"
    env = dict(os.environ, SFTLAB_FAULTS="sleep_after_step=5:2")
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 5:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert "stopped by SIGTERM after step 5" in err
    assert find_latest_valid(out / "checkpoints").name == "step-000005"
    run(out, "train.resume=auto")
    assert_identical(tmp_path / "straight", out, after_step=5)
