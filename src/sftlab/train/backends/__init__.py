"""Training backends: one process, DDP, FSDP2, DeepSpeed ZeRO behind one protocol (``base.Backend``)."""

from __future__ import annotations

from sftlab.config import TrainConfig
from sftlab.train.backends.base import Backend
from sftlab.train.backends.ddp import DdpBackend
from sftlab.train.backends.deepspeed import DeepSpeedBackend
from sftlab.train.backends.fsdp2 import Fsdp2Backend
from sftlab.train.distributed import uses_fsdp2
from sftlab.train.zero import is_deepspeed

__all__ = ["Backend", "DdpBackend", "DeepSpeedBackend", "Fsdp2Backend", "select_backend"]


def select_backend(t: TrainConfig, accelerator) -> Backend:
    """The backend for this run: DeepSpeed when accelerate set it up, FSDP2 when asked for (config or an
    accelerate config) with several processes, DDP for any other multi-process run, else one process."""
    if is_deepspeed(accelerator):
        return DeepSpeedBackend(accelerator, t)
    if uses_fsdp2(t.distributed, accelerator):
        return Fsdp2Backend(accelerator, t)
    if accelerator.num_processes > 1:
        return DdpBackend(accelerator, t)
    return Backend(accelerator, t)
