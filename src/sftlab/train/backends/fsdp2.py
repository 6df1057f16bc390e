"""FSDP2 (torch's ``fully_shard``, train/distributed.py): parameters, gradients and optimizer state sharded."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sftlab.train.backends.base import Backend
from sftlab.train.distributed import full_state_dict, shard_fsdp2
from sftlab.train.loss import LossHead
from sftlab.train.optim import build_optimizer


class Fsdp2Backend(Backend):
    name = "fsdp2"
    sharded = True

    def prepare(self, lm) -> None:
        self.lm = lm
        self.model = LossHead(lm)  # the root sharded unit: its forward gathers the embeddings, final norm and head
        shard_fsdp2(self.model, cpu_offload=self.t.fsdp_cpu_offload)
        self.optimizer = build_optimizer(self.model, self.t)  # over the shards (DTensors)

    def sync(self, is_last: bool):
        # FSDP2's no_sync: keep unsharded gradients until the step's last micro-batch
        self.model.set_requires_gradient_sync(is_last)
        return contextlib.nullcontext()

    def clip_grad_norm(self) -> float:
        # the gradients are DTensor shards: torch reduces their norm over the processes and returns a DTensor
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.t.max_grad_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @property
    def checkpoint_module(self):
        return self.model

    def save(self, root: Path, step: int, scheduler, state: dict, faults) -> Path:
        return self.save_distributed(root, step, scheduler, state, faults)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("lm."): v for k, v in full_state_dict(self.model).items()}
