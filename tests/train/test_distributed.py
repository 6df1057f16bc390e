"""Two CPU processes (gloo) through accelerate give the per-step losses and weights of one process.

Same global batch (1 process: micro 4 x accum 2; 2 processes: micro 2 x accum 2 each) and data order.
Tolerance: losses rel 1e-5; weights atol 1e-4 (float reordering of the gradient all-reduce, amplified by
Adam where a gradient is near zero: measured max difference 1.0e-5 on weights of magnitude ~1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("train_driver.py")


def torchrun(out: Path, nproc: int, *overrides: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        str(DRIVER),
        str(out),
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", SFTLAB_FAULTS="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("gcc") is None and sys.platform != "linux", reason="needs a POSIX host")
@pytest.mark.parametrize("case", [[], ["data.packing=true", "data.max_seq_len=48"], ["lora_nodrop=1"]])
def test_ddp_two_processes_equal_one(tmp_path, case):
    torchrun(tmp_path / "one", 1, "train.micro_batch_size=4", *case)
    torchrun(tmp_path / "two", 2, "train.micro_batch_size=2", *case)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-5)
    wa, wb = (
        load_file(str(tmp_path / "one" / "final.safetensors")),
        load_file(str(tmp_path / "two" / "final.safetensors")),
    )
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-4, msg=name)
