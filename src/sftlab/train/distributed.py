"""Several processes: FSDP2 sharding (torch's ``fully_shard``), consolidation, and the one-machine launcher.

DDP and DeepSpeed come from accelerate (``Accelerator.prepare``). FSDP2 is applied here with torch's own
``fully_shard`` so it runs the same on CPU (gloo) and GPU (nccl): accelerate 1.15 honours its FSDP plugin
only for GPU-like devices and falls back to DDP on CPU (``AcceleratorState``: ``MULTI_CPU`` never becomes
``FSDP``), which would leave the FSDP2 path untested off GPUs.
"""

from __future__ import annotations

import os
import sys

import torch


def uses_fsdp2(cfg_distributed: str, accelerator) -> bool:
    """FSDP2 when the sftlab config asks for it, or when an accelerate config (``accelerate launch``) does."""
    if accelerator.num_processes < 2:
        return False
    return cfg_distributed == "fsdp2" or bool(getattr(accelerator, "is_fsdp2", False))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (or of the LM inside a ``LossHead`` or a peft wrapper)."""
    base = getattr(model, "lm", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    layers = getattr(base.get_decoder(), "layers", None) if hasattr(base, "get_decoder") else None
    if layers is None:
        raise ValueError(
            f"train.distributed fsdp2: {type(base).__name__} has no decoder.layers to shard; use train.distributed: ddp"
        )
    return list(layers)


def shard_fsdp2(model, cpu_offload: bool = False) -> int:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, head): parameters, gradients
    and optimizer state are split across processes; each layer is gathered just before it runs.

    ``model``: the module whose ``forward`` runs each step (the loop's ``LossHead``): the root's parameters
    are gathered in its forward, so a forward that bypassed it would see shards. In place; returns the
    number of layers sharded. Build the optimizer afterwards (parameters become ``DTensor`` shards).
    Gradients are averaged over processes (reduce-scatter), as with DDP.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return 0
    # pinned host memory speeds the GPU copies; without a GPU there is nothing to pin for (and torch refuses)
    kwargs = {"offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available())} if cpu_offload else {}
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return len(layers)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of an FSDP2 model as plain CPU tensors, on the main process (others: empty).

    A collective: every process must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def relaunch_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``sftlab`` ``argv`` as ``nproc`` processes on this machine (elastic launch).

    >>> relaunch_command(2, ["train", "c.yaml"])[1:5]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "sftlab",
        *argv,
    ]


def is_launched() -> bool:
    """Whether this process was started by a launcher (torchrun, accelerate launch, srun + torchrun)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ
