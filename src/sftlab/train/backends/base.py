"""The single-process backend, and the protocol every backend follows.

A backend owns what differs between one process, DDP, FSDP2 and DeepSpeed: how the model and optimizer are
wrapped, how gradients are synchronised across the micro-batches of a step, the backward pass, the update,
checkpoints and the trained weights for ``final/``. The loop (``train/loop.py``) asks it and never branches.

    backend.prepare(lm)                  # wrap: backend.model (LossHead over the LM), backend.optimizer
    with backend.sync(is_last):          # gradients all-reduced only on the step's last micro-batch
        finite = backend.backward(loss)  # False: a non-finite loss on some process, nothing was back-propagated
    applied, grad_norm = backend.step(finite, step_loss)  # clip + update (or skip); then backend.zero_grad()
    backend.save(root, step, scheduler, state, faults) / backend.load(ckpt, scheduler) -> state
    backend.full_state_dict()            # sharded backends: the trained weights gathered, for final/
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from sftlab.config import TrainConfig
from sftlab.train.checkpoint import load_checkpoint, save_checkpoint, save_distributed_checkpoint
from sftlab.train.loss import LossHead
from sftlab.train.optim import build_optimizer


class Backend:
    """One process (accelerate's ``prepare`` for device placement and mixed precision)."""

    name = "single"
    sharded = False  # parameters split across processes: final/ needs full_state_dict(), no eval on one process

    def __init__(self, accelerator, t: TrainConfig):
        self.accelerator, self.t = accelerator, t
        self.world = accelerator.num_processes
        self.lm = self.model = self.optimizer = None
        self.loss_scale_skips = 0  # DeepSpeed fp16: updates skipped while the loss scale came down

    # ------------------------------------------------------------------ set-up
    def prepare(self, lm) -> None:
        """``self.model`` (the module whose forward returns the loss sum) and ``self.optimizer``."""
        self.lm = lm
        self.base_optimizer = build_optimizer(lm, self.t)
        self.model, self.optimizer = self.accelerator.prepare(LossHead(lm), self.base_optimizer)

    @property
    def schedule_optimizer(self):
        """The optimizer whose learning rate the schedule sets."""
        return self.optimizer

    @property
    def torch_optimizer(self):
        """The torch optimizer inside accelerate's wrapper (what checkpoints hold)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ one step
    def sync(self, is_last: bool):
        """Context for one micro-batch's forward and backward; gradients are synchronised when ``is_last``."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> bool:
        """Back-propagate ``loss`` unless it is non-finite on some process (then nothing is done: False)."""
        if not self.all_finite(loss):
            return False
        # DDP / FSDP average gradients over processes; scaling by their number makes it a sum
        self.accelerator.backward(loss * self.world)
        return True

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (they must agree before a collective backward)."""
        ok = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok)

    def sum_over_processes(self, value: float) -> float:
        """``value`` summed over every process (the step's loss: each process holds its micro-batches' part)."""
        if self.world == 1:
            return value
        return float(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device), "sum"))

    def clip_grad_norm(self) -> float:
        """Clip the gradient norm (one process, or DDP's all-reduced gradients); returns the norm before clipping.

        As ``torch.nn.utils.clip_grad_norm_``, except that the gradients are left untouched, rather than
        multiplied by 1.0, when the norm is within ``train.max_grad_norm`` (a full pass over every gradient per
        step: 1.5% of a SmolLM2-135M step on CPU); the results are bitwise the same."""
        self.accelerator.unscale_gradients()  # fp16 with a loss scaler: the true gradients first
        params = self.params
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        max_norm = self.t.max_grad_norm
        if max_norm and bool(max_norm / (norm + 1e-6) < 1.0):  # the coefficient torch clamps to 1.0
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    def step(self, finite: bool, step_loss: float) -> tuple[bool, float]:
        """Clip and update when every micro-batch was finite and so is the gradient norm:
        ``(applied, gradient norm before clipping)``."""
        if not finite:
            return False, float("nan")
        grad_norm = self.clip_grad_norm()
        if not math.isfinite(grad_norm):
            return False, grad_norm
        self.optimizer.step()
        return True, grad_norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ checkpoints and final weights
    def save(self, root: Path, step: int, scheduler, state: dict, faults) -> Path:
        return save_checkpoint(root, step, self.lm, self.optimizer, scheduler, state, faults)

    def load(self, ckpt: Path, scheduler) -> dict:
        return load_checkpoint(ckpt, self.checkpoint_module, self.torch_optimizer, scheduler)

    @property
    def checkpoint_module(self):
        """The module whose parameters a checkpoint holds (the LM; sharded backends: the wrapped model)."""
        return self.lm

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The trained weights gathered on the main process (LM names), or None when the LM holds them."""
        return None

    def save_distributed(self, root: Path, step: int, scheduler, state: dict, faults, engine=None) -> Path:
        """Every process writes its part of the checkpoint (DCP shards, or a DeepSpeed ``engine``'s)."""
        return save_distributed_checkpoint(root, step, self.checkpoint_module, self.torch_optimizer, scheduler, state,
                                           faults, engine=engine)  # fmt: skip
