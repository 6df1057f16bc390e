"""DDP (accelerate): every process holds the whole model; gradients are all-reduced once per step."""

from __future__ import annotations

from pathlib import Path

from sftlab.train.backends.base import Backend


class DdpBackend(Backend):
    name = "ddp"

    def sync(self, is_last: bool):
        # no all-reduce on the step's earlier micro-batches: their gradients accumulate locally
        return super().sync(is_last) if is_last else self.accelerator.no_sync(self.model)

    def save(self, root: Path, step: int, scheduler, state: dict, faults) -> Path:
        return self.save_distributed(root, step, scheduler, state, faults)
