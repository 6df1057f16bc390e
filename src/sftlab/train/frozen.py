"""Frozen linear weights cast to the autocast dtype once per ``train()``, not in every forward pass.

Under bf16 / fp16 autocast every ``F.linear`` casts its float32 weight to the low precision on each call;
autocast keeps such casts (for one forward pass) only for weights that are trained. A frozen weight (LoRA's
base model, what a ``select`` leaves untouched, a tied LM head that is not trained) cannot change during
``train()``, so its low-precision copy is made on first use and reused: the same values reach the same matmul
(results are bitwise equal), and the copying of those weights per micro-batch is gone. Only plain
``nn.Linear`` modules with float32 weights, on one process or under DDP (sharded backends own their parameters),
and not with ``train.compile``; the copies are dropped when training ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def frozen_linears_cast(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, frozen float32 ``nn.Linear`` layers of ``model`` use a cached copy of their weight in
    the autocast dtype whenever autocast is on; yields how many layers do."""
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad
              and m.weight.dtype == torch.float32] if enabled else []  # fmt: skip
    for m in layers:
        m.forward = _CachedCast(m)  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


class _CachedCast:
    def __init__(self, layer: torch.nn.Linear):
        self.layer, self.low = layer, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer, device = self.layer, x.device.type
        if not torch.is_autocast_enabled(device):
            return F.linear(x, layer.weight, layer.bias)
        dtype = torch.get_autocast_dtype(device)
        if self.low is None or self.low.dtype != dtype or self.low.device != layer.weight.device:
            self.low = layer.weight.detach().to(dtype)
        return F.linear(x, self.low, layer.bias)
