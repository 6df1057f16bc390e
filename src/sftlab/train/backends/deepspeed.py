"""DeepSpeed ZeRO (accelerate + train/zero.py): the engine runs backward, accumulation and the update."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sftlab.train.backends.base import Backend
from sftlab.train.zero import engine_step
from sftlab.train.zero import full_state_dict as zero_full_state_dict


class DeepSpeedBackend(Backend):
    name = "deepspeed"
    sharded = True

    # prepare (the base class's): model is the DeepSpeed engine, optimizer accelerate's wrapper of the engine's

    @property
    def engine(self):
        return self.model

    @property
    def schedule_optimizer(self):
        return self.base_optimizer  # DeepSpeed steps it inside its own optimizer; the schedule sets its lr

    def sync(self, is_last: bool):
        self.engine.set_gradient_accumulation_boundary(is_last)  # the engine's accumulation boundary
        return super().sync(is_last)

    def backward(self, loss: torch.Tensor) -> bool:
        # a non-finite loss makes non-finite gradients: the engine's step skips that update
        self.engine.backward(loss * self.world)  # not accelerator.backward, which would step each time
        return True

    def step(self, finite: bool, step_loss: float) -> tuple[bool, float]:
        applied, grad_norm = engine_step(self.engine)  # clip + step, or skip when the gradients are not finite
        if not applied and self.t.precision == "fp16" and math.isfinite(step_loss):
            self.loss_scale_skips += 1  # fp16's dynamic loss scale overflowed and was lowered: not a data problem
            return True, grad_norm
        return applied, grad_norm

    @property
    def checkpoint_module(self):
        return self.model

    def save(self, root: Path, step: int, scheduler, state: dict, faults) -> Path:
        if self.world == 1:
            return super().save(root, step, scheduler, state, faults)
        return self.save_distributed(root, step, scheduler, state, faults, engine=self.engine)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("lm."): v for k, v in zero_full_state_dict(self.engine).items()}
