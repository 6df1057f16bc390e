"""`sftlab train CONFIG --nproc 2` starts two processes itself (torch.distributed.run) and writes one run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

NO_DEEPSPEED = importlib.util.find_spec("deepspeed") is None


@pytest.mark.parametrize(
    "sharding",
    [
        {"distributed": "fsdp2"},
        pytest.param(
            {"distributed": "deepspeed", "deepspeed_stage": 3},
            marks=pytest.mark.skipif(NO_DEEPSPEED, reason="DeepSpeed not installed (pip install 'sftlab[deepspeed]')"),
        ),
    ],
    ids=["fsdp2", "deepspeed-zero3"],
)
def test_cli_nproc_two_sharded_writes_one_consolidated_final_model(tmp_path, tiny_tokenizer_dir, tiny_model, sharding):
    """From a pretrained folder (ZeRO-3 loads it partitioned, through zero.Init): parameter counts, training and
    the consolidated final/ are those of the whole model."""
    tiny_model.save_pretrained(tmp_path / "base")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}."},
            ]
        }
        for i in range(16)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"name_or_path": str(tmp_path / "base"), "tokenizer": str(tiny_tokenizer_dir)},
        "data": {
            "sources": [{"path": str(tmp_path / "chat.jsonl")}],
            "max_seq_len": 64,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"max_steps": 3, "micro_batch_size": 2, "lr": 1e-2, "progress": False, **sharding},
        "eval": {"samples": 0, "split_ratio": 0.25},  # eval loss on 4 held-out records, every process
        "output": {"dir": str(tmp_path / "run"), "report": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", SFTLAB_FAULTS="")
    proc = subprocess.run(
        [sys.executable, "-m", "sftlab", "train", str(tmp_path / "c.yaml"), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 3 steps") == 1, proc.stdout  # the summary line from the main process only
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_records"] == 4
    assert 0 < summary["eval_loss"] < 20
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # log_every_steps 10: the last step only
    # final/ is a plain HF folder with the gathered (not sharded) weights: full shapes (shards would be halves)
    n_params = sum(p.numel() for p in tiny_model.parameters())
    assert summary["trainable_parameters"] == summary["total_parameters"] == n_params  # not partition sizes
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    up, up0 = model.model.layers[0].mlp.up_proj.weight, tiny_model.model.layers[0].mlp.up_proj.weight
    assert up.shape == up0.shape and torch.isfinite(up).all() and not torch.equal(up, up0)  # whole, and trained
    assert model.model.embed_tokens.weight.shape == tiny_model.model.embed_tokens.weight.shape
