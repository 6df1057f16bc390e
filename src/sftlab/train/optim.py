"""AdamW with decay / no-decay parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from sftlab.config import TrainConfig
from sftlab.model.load import param_shape


def build_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; biases, norms and embeddings do not (only trainable parameters).

    Frozen parameters are left out, so they get no optimizer state.
    """
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if len(param_shape(p)) < 2 or id(p) in embeddings or "norm" in name.lower():  # ZeRO-3: p may be empty
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = build_param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=_can_fuse(groups))


def _can_fuse(groups: list[dict]) -> bool:
    """The fused AdamW kernel (one pass over each tensor: 7 ms vs 23 ms a step for 28M parameters on 2 CPU
    cores) for single-process runs on CPU / CUDA; sharded (FSDP) parameters keep the default implementation."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    params = [p for g in groups for p in g["params"]]
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warm-up, then cosine / linear / constant.

    The decay reaches ``min_lr_ratio`` after the last step, as transformers' schedules (and TRL's) do: with no
    warm-up, step ``s`` of ``T`` has cosine ``0.5 * (1 + cos(pi * s / T))``. The last step still updates (with
    ``min_lr_ratio`` 0, a schedule that reached the floor on the last step would spend that step on nothing).
    """
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.scheduler == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.scheduler == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
