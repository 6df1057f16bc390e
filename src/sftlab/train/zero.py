"""DeepSpeed ZeRO (stages 1-3, optional CPU offload) under the sftlab loop, through accelerate.

accelerate builds the engine (``Accelerator(deepspeed_plugin=...)`` + ``prepare``); the loop drives it
itself so that one optimizer step stays one sftlab window:

- the DeepSpeed config keeps ``gradient_accumulation_steps: 1`` and the loop marks the window's last
  micro-batch with ``engine.set_gradient_accumulation_boundary`` (windows may hold different numbers of
  micro-batches; DeepSpeed's own counter would scale each loss by 1/accum and step on its own schedule);
- the loss is already divided by the window's labelled tokens, and multiplied by the process count
  because ZeRO averages gradients over processes (as DDP does);
- ``engine.step()`` clips to ``train.max_grad_norm`` (``gradient_clipping``), skips the update when the
  gradients are not finite (``was_step_applied``) and clears them; the learning rate comes from sftlab's
  schedule on the optimizer's parameter groups;
- checkpoints are DeepSpeed's own (``engine.save_checkpoint``: each process writes its partition), sealed
  with sftlab's manifest and atomic rename; the final model gathers the fp32 master weights.

accelerate only selects DeepSpeed for GPU-like devices; on a CPU-only machine the processes talk over gloo
(DeepSpeed's CPU accelerator), which is how the tests run it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from sftlab.config import ConfigError, TrainConfig
from sftlab.console import say

DS_CHECKPOINT_TAG = "deepspeed"  # the folder engine.save_checkpoint writes inside a checkpoint
# keys of a user's DeepSpeed config that sftlab sets from its own config (the loop owns these)
OWNED = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "train_batch_size": "train.micro_batch_size x train.grad_accum x processes",
    "gradient_clipping": "train.max_grad_norm",
    "optimizer": "train.lr / weight_decay / adam_betas (sftlab builds AdamW)",
    "scheduler": "train.scheduler / warmup (sftlab's schedule)",
}
PRECISION_SECTIONS = ("fp16", "bf16")  # allowed (loss-scale settings, ...), but "enabled" follows train.precision


def wants_deepspeed(t: TrainConfig) -> bool:
    """Whether this (multi-process) run uses DeepSpeed: asked for in the sftlab config, or by an accelerate
    config (``accelerate launch`` with ``distributed_type: DEEPSPEED`` sets ``ACCELERATE_USE_DEEPSPEED``).

    One process never does (nothing to shard): an accelerate DeepSpeed config is then set aside with a note.
    """
    from_launcher = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        if from_launcher:
            say("note: one process: the accelerate DeepSpeed config is not used (nothing to shard)")
            os.environ.pop("ACCELERATE_USE_DEEPSPEED")  # or accelerate would build an engine for one process
        return False
    if from_launcher and t.distributed in ("ddp", "fsdp2"):
        raise ConfigError(
            f"the accelerate config selects DeepSpeed but train.distributed is {t.distributed}; use an accelerate "
            f"config without DeepSpeed (examples/accelerate/{t.distributed}.yaml) or train.distributed: deepspeed"
        )
    return t.distributed == "deepspeed" or from_launcher


def launcher_settings(t: TrainConfig, env=os.environ) -> TrainConfig:
    """``t`` with the DeepSpeed settings of an accelerate config applied (``accelerate launch`` passes them
    as environment variables: ``zero_stage``, ``offload_optimizer_device``, ``deepspeed_config_file``).
    Accumulation, clipping and precision stay sftlab's (``train.*``).

    >>> launcher_settings(TrainConfig(), {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}).deepspeed_stage
    3
    """
    changes: dict = {}
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage not in (None, "", "none"):
        if stage not in ("1", "2", "3"):
            raise ConfigError(f"accelerate config: zero_stage {stage} is not supported by sftlab; use 1, 2 or 3")
        changes["deepspeed_stage"] = int(stage)
    offload = {env.get(k, "none") for k in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                                            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")} - {"none", ""}
    if offload - {"cpu"}:
        raise ConfigError(
            f"accelerate config: offload device {sorted(offload - {'cpu'})} is not supported by sftlab; use cpu, "
            "or a DeepSpeed JSON config (deepspeed_config_file) with the offload section you need"
        )
    if offload:
        changes["deepspeed_offload"] = True
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file not in (None, "", "none", "None"):
        changes["deepspeed_config"] = config_file
    return replace(t, **changes) if changes else t


def deepspeed_config(t: TrainConfig) -> dict:
    """The DeepSpeed config of a run: ``train.deepspeed_config`` (a JSON file) or ZeRO stage
    ``train.deepspeed_stage`` with ``train.deepspeed_offload``, plus the keys the loop owns.

    >>> deepspeed_config(TrainConfig(deepspeed_stage=3, max_grad_norm=0.5))["zero_optimization"]
    {'stage': 3}
    """
    if t.deepspeed_config:
        path = Path(t.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed_config: no file {path}")
        try:
            user = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"train.deepspeed_config: {path} is not valid JSON ({e})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"train.deepspeed_config: {path} must hold a JSON object")
        clashes = [k for k in OWNED if k in user and user[k] != "auto"]
        for k in PRECISION_SECTIONS:
            section = user.get(k)
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"train.deepspeed_config: {path}: {k} must be an object")
            if section and section.get("enabled", "auto") not in ("auto", k == t.precision):
                clashes.append(f"{k}.enabled")
        if clashes:
            raise ConfigError(
                f"train.deepspeed_config: {path} sets {', '.join(clashes)}; sftlab sets these from its own config ("
                + "; ".join(f"{k}: {OWNED.get(k, 'train.precision')}" for k in clashes)
                + '). Remove them or set them to "auto"'
            )
        config = {k: v for k, v in user.items() if k not in OWNED}
        for k in PRECISION_SECTIONS:
            if k in config:
                config[k] = {**config[k], "enabled": k == t.precision}
    else:
        zero: dict = {"stage": t.deepspeed_stage}
        if t.deepspeed_offload:
            zero["offload_optimizer"] = {"device": "cpu"}
            if t.deepspeed_stage == 3:
                zero["offload_param"] = {"device": "cpu"}
        config = {"zero_optimization": zero}
    if "zero_optimization" in config and "offload_optimizer" in config["zero_optimization"]:
        config.setdefault("zero_force_ds_cpu_optimizer", False)  # sftlab's AdamW on offloaded state
    if t.precision in ("bf16", "fp16"):
        # DeepSpeed runs 16-bit weights (fp32 masters in the optimizer) and would also accumulate the window's
        # gradients and reduce them between processes in 16 bits; keep both in fp32, as DDP / FSDP2 do here
        config.setdefault("communication_data_type", "fp32")
        config.setdefault("data_types", {"grad_accum_dtype": "fp32"})
    config.update(
        train_micro_batch_size_per_gpu=t.micro_batch_size,  # only DeepSpeed's own throughput log reads it
        gradient_accumulation_steps=1,  # the loop marks the window's boundary itself
        gradient_clipping=t.max_grad_norm,  # 0: no clipping
        zero_allow_untested_optimizer=True,  # torch's AdamW on ZeRO's flat partitions
        steps_per_print=2**31 - 1,
    )
    return config


def build_deepspeed_accelerator(t: TrainConfig, mixed_precision: str):
    """An ``Accelerator`` whose ``prepare`` builds a DeepSpeed engine for ``t``, on GPUs or (gloo) on CPU.
    ``mixed_precision``: accelerate's name for ``t.precision`` (no | bf16 | fp16)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.distributed: deepspeed needs DeepSpeed: pip install 'sftlab[deepspeed]' (or pip install deepspeed)"
        ) from None
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    config = deepspeed_config(launcher_settings(t))  # the accelerate config's DeepSpeed fields are read here
    fields = os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)  # so accelerate need not refuse them again
    try:
        plugin = DeepSpeedPlugin(hf_ds_config=config)
    finally:
        if fields is not None:
            os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = fields
    handlers = []
    if not torch.cuda.is_available():
        # accelerate picks a backend only for GPU-like devices; DeepSpeed's CPU accelerator uses gloo
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    before = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    accelerator = Accelerator(mixed_precision=mixed_precision, deepspeed_plugin=plugin, kwargs_handlers=handlers)
    if before is None:  # accelerate sets it process-wide; a later run in this process decides afresh
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    return accelerator


def is_deepspeed(accelerator) -> bool:
    return str(accelerator.distributed_type) in ("DEEPSPEED", "DistributedType.DEEPSPEED")


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def engine_step(engine) -> tuple[bool, float]:
    """The window's update: clip, AdamW step (skipped when the gradients are not finite), clear gradients.
    Returns (applied, gradient norm before clipping)."""
    engine.step()
    norm = engine.get_global_grad_norm()
    norm = float(norm) if norm is not None else float("nan")
    applied = bool(engine.was_step_applied())
    return applied, norm if applied else float("nan")


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The trained model's full state dict with fp32 master weights (ZeRO keeps them partitioned, and the
    model's own parameters may be bf16 / fp16 copies), as CPU tensors on the main process (others: empty).

    Names are those of ``engine.module`` (the loop's ``LossHead``: ``lm.`` prefix). A collective.
    """
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    main = torch.distributed.get_rank() == 0
    stage3 = zero_stage(engine) == 3
    full: dict[int, torch.Tensor] = {}
    for _, p in module.named_parameters():
        value = safe_get_full_fp32_param(p) if p.requires_grad else None
        if value is None:  # frozen (LoRA's base): not in the optimizer, gathered from the model
            ctx = GatheredParameters([p]) if stage3 else contextlib.nullcontext()
            with ctx:
                value = p.detach().clone()
        if main:
            full[id(p)] = value.cpu()
    if not main:
        return {}
    by_name = {name: full[id(p)] for name, p in module.named_parameters(remove_duplicate=False)}  # tied too
    state = {}
    for name, tensor in module.state_dict().items():
        state[name] = by_name[name] if name in by_name else tensor.detach().cpu()
    return state


def save_engine_state(engine, folder: Path) -> None:
    """Each process writes its ZeRO partition of weights and optimizer state (DeepSpeed's checkpoint);
    frozen tensors (LoRA's base) are left out: they are rebuilt from the base model."""
    engine.save_checkpoint(str(folder), tag=DS_CHECKPOINT_TAG, save_latest=False, exclude_frozen_parameters=True)


def load_engine_state(engine, folder: Path, saved_world: int | None = None) -> None:
    if not hasattr(engine, "load_checkpoint"):
        raise ValueError(
            f"checkpoint {folder} was written by a DeepSpeed run; resume it with train.distributed: deepspeed"
        )
    world = torch.distributed.get_world_size()
    if saved_world is not None and saved_world != world:
        raise ValueError(
            f"checkpoint {folder} holds the ZeRO partitions of {saved_world} processes; DeepSpeed cannot load them "
            f"into {world}: resume with {saved_world} processes (--nproc {saved_world})"
        )
    path, _ = engine.load_checkpoint(
        str(folder),
        tag=DS_CHECKPOINT_TAG,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
        load_module_strict=False,  # frozen tensors were not saved
    )
    if path is None:
        raise ValueError(f"checkpoint {folder}: DeepSpeed could not load {DS_CHECKPOINT_TAG}/")
