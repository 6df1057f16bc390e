"""DeepSpeed ZeRO under the sftlab loop: two CPU processes (gloo, DeepSpeed's CPU accelerator) give the
per-step losses and the weights of one process with the same global batch and data order.

Measured on 2 CPU cores (torch 2.13, DeepSpeed 0.19.8), against one process (micro 4 x accum 2):
ZeRO-2 loss rel 8.9e-8, weights max 6.3e-6; ZeRO-3 1.2e-7 / 3.1e-6; ZeRO-3 + LoRA 1.7e-7 / 3.0e-7;
packed ZeRO-2 8.9e-8 / 9.0e-6. Tolerances as for DDP and FSDP2 (test_distributed.py): losses rel 1e-5,
weights atol 1e-4. Resume after a kill is bitwise (DeepSpeed's partitioned checkpoint + every rank's RNG).
The config helpers are tested without DeepSpeed installed.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_distributed import (
    DRIVER,
    assert_resumes_bitwise,
    kill_in_second_checkpoint,
    losses,
    torchrun,
    weights,
)

from sftlab.config import ConfigError, TrainConfig
from sftlab.train import zero
from sftlab.train.zero import deepspeed_config, launcher_settings, wants_deepspeed

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed (pip install 'sftlab[deepspeed]')"
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
DS = ["train.micro_batch_size=2", "train.distributed=deepspeed"]


def assert_same_run(one: Path, two: Path) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-5, nan_ok=True)
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wb[name].dtype == torch.float32, name  # the fp32 master weights, gathered
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-4, msg=name)


# ---- config (no DeepSpeed needed) ----


def test_docstring_examples():
    result = doctest.testmod(zero)
    assert result.attempted >= 2 and result.failed == 0


def test_config_from_stage_and_offload_with_loop_owned_keys():
    t = TrainConfig(deepspeed_stage=3, deepspeed_offload=True, micro_batch_size=4, grad_accum=8, max_grad_norm=0.5)
    c = deepspeed_config(t)
    assert c["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}
    assert c["zero_force_ds_cpu_optimizer"] is False  # sftlab's AdamW on the offloaded state
    # the loop marks the window's boundary itself: DeepSpeed must not divide by, or step on, its own count
    assert c["gradient_accumulation_steps"] == 1 and c["gradient_clipping"] == 0.5
    assert c["train_micro_batch_size_per_gpu"] == 4
    assert "optimizer" not in c and "scheduler" not in c
    two = deepspeed_config(TrainConfig(deepspeed_offload=True))["zero_optimization"]
    assert two == {"stage": 2, "offload_optimizer": {"device": "cpu"}}  # no parameter offload below stage 3


def test_user_json_config_keeps_its_engine_settings_and_refuses_loop_owned_keys(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True}, "gradient_clipping": "auto"}))
    c = deepspeed_config(TrainConfig(deepspeed_config=str(path), max_grad_norm=2.0))
    assert c["zero_optimization"] == {"stage": 3, "overlap_comm": True} and c["gradient_clipping"] == 2.0
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4, "optimizer": {}}))
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps, optimizer.*train\.grad_accum.*auto"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)))
    path.write_text(json.dumps({"fp16": {"loss_scale_window": 500}, "bf16": {"enabled": "auto"}}))
    c = deepspeed_config(TrainConfig(deepspeed_config=str(path), precision="fp16"))
    assert c["fp16"] == {"loss_scale_window": 500, "enabled": True} and c["bf16"] == {"enabled": False}
    assert c["communication_data_type"] == "fp32" and c["data_types"] == {"grad_accum_dtype": "fp32"}
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"bf16\.enabled: train\.precision"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path), precision="fp32"))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(TrainConfig(deepspeed_config=str(path)))
    with pytest.raises(ConfigError, match="no file"):
        deepspeed_config(TrainConfig(deepspeed_config=str(tmp_path / "missing.json")))


def test_accelerate_config_settings_and_when_deepspeed_is_used():
    env = {
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
    }
    t = launcher_settings(TrainConfig(), env)
    assert (t.deepspeed_stage, t.deepspeed_offload, t.deepspeed_config) == (3, True, None)
    assert launcher_settings(TrainConfig(), {}) == TrainConfig()
    assert launcher_settings(TrainConfig(), {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}).deepspeed_config == "ds.json"
    with pytest.raises(ConfigError, match="nvme"):
        launcher_settings(TrainConfig(), {"ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "nvme"})
    ds = replace(TrainConfig(), distributed="deepspeed")
    env_backup = {k: os.environ.get(k) for k in ("WORLD_SIZE", "ACCELERATE_USE_DEEPSPEED")}
    try:
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        os.environ["WORLD_SIZE"] = "1"
        assert not wants_deepspeed(ds)  # one process: plain training, nothing to shard
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        assert not wants_deepspeed(TrainConfig())  # a DeepSpeed accelerate config with one process: set aside
        assert "ACCELERATE_USE_DEEPSPEED" not in os.environ  # so accelerate builds no engine either
        os.environ["WORLD_SIZE"] = "2"
        assert wants_deepspeed(ds) and not wants_deepspeed(TrainConfig())
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # accelerate launch with a DeepSpeed config
        assert wants_deepspeed(TrainConfig())
        with pytest.raises(ConfigError, match="selects DeepSpeed but train.distributed is fsdp2"):
            wants_deepspeed(replace(TrainConfig(), distributed="fsdp2"))
    finally:
        for k, v in env_backup.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# ---- two processes on CPU ----


@needs_deepspeed
@pytest.mark.parametrize(
    "case",
    [[], ["data.packing=true", "data.max_seq_len=48"], ["train.deepspeed_offload=true", "model.gradient_checkpointing=true"]],
    ids=["padded", "packed", "offload+checkpointing"],
)
def test_zero2_two_processes_equal_one(tmp_path, case):
    torchrun(tmp_path / "one", 1, "train.micro_batch_size=4", *case)
    torchrun(tmp_path / "two", 2, *DS, "train.deepspeed_stage=2", *case)
    assert_same_run(tmp_path / "one", tmp_path / "two")


@needs_deepspeed
def test_zero2_resume_after_kill_is_exact(tmp_path):
    """Killed while writing its second checkpoint, the run resumes from the first (each process's ZeRO
    partition) and ends bitwise equal to the uninterrupted run."""
    args = [*DS, "train.deepspeed_stage=2", "train.save_every_steps=4"]
    torchrun(tmp_path / "two", 2, *args)
    assert (kill_in_second_checkpoint(tmp_path / "res", *args) / "deepspeed").is_dir()
    assert_resumes_bitwise(tmp_path / "res", tmp_path / "two", *args)


@needs_deepspeed
def test_zero3_lora_from_json_config_equals_one_and_resumes(tmp_path):
    """ZeRO-3 from a DeepSpeed JSON whose bucket sizes are "auto" (filled from the model's hidden size), with
    LoRA: equal to one process; killed at its second checkpoint (frozen base left out of it), it resumes
    bitwise."""
    ds_json = tmp_path / "ds.json"
    auto = ["reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"]
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 3, **{k: "auto" for k in auto}}}))
    args = [*DS, f"train.deepspeed_config={ds_json}", "lora_nodrop=1", "train.save_every_steps=4"]
    torchrun(tmp_path / "one", 1, "train.micro_batch_size=4", "lora_nodrop=1")
    torchrun(tmp_path / "two", 2, *args)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    kill_in_second_checkpoint(tmp_path / "res", *args)
    assert_resumes_bitwise(tmp_path / "res", tmp_path / "two", *args)


@needs_deepspeed
def test_accelerate_launch_zero3_config_skips_a_nonfinite_step_like_one_process(tmp_path):
    """The example accelerate config selects ZeRO-3; a NaN loss at step 3 skips that update on every
    process (DeepSpeed's overflow check), as the single-process loop does."""
    torchrun(tmp_path / "one", 1, "train.micro_batch_size=4", faults="nan_at_step=3")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(EXAMPLES / "deepspeed_zero3.yaml"), "--num_processes", "2",
        str(DRIVER), str(tmp_path / "two"), "train.micro_batch_size=2",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", SFTLAB_FAULTS="nan_at_step=3")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped_steps=1" in proc.stdout
    assert losses(tmp_path / "two")[2] != losses(tmp_path / "two")[2]  # NaN logged for step 3
    assert_same_run(tmp_path / "one", tmp_path / "two")
