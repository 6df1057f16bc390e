"""Checkpoints that are never half-written, and exact resume.

A checkpoint is a folder ``OUTPUT/checkpoints/step-000120/`` holding:
- ``trainable.safetensors``: every trainable tensor (all weights for full fine-tuning, the adapters for
  LoRA, the selected tensors for selective training). Frozen tensors are rebuilt by loading the base.
- ``optimizer.pt``, ``scheduler.pt``: their state dicts.
- ``state.json``: step, token counters, the per-step losses so far, python / numpy RNG states;
  ``rng.safetensors``: torch RNG states. Nothing is unpickled on resume.
- ``manifest.json``, written last: the sha256 of every file above.
A multi-process run writes the RNG state of every process and its sharded weights + optimizer state
instead (:func:`save_distributed_checkpoint`): ``dcp/`` (torch.distributed.checkpoint) for DDP and FSDP2,
``deepspeed/`` (DeepSpeed's own partitioned files, which it reads back with pickle) for ZeRO.
It is written to ``step-000120.tmp`` and renamed, so a crash leaves either nothing or a whole
checkpoint; one whose manifest is missing or whose checksums fail is ignored with a warning.

The data position needs no storage: the windows of every epoch are a pure function of (seed, epoch),
so step ``s`` resumes at window ``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch`` at once,
with no batch replayed or skipped one by one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from sftlab.console import warn
from sftlab.files import sha256_file
from sftlab.train.zero import DS_CHECKPOINT_TAG

MANIFEST = "manifest.json"


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """RNG states as (JSON-able python / numpy part, tensors for safetensors): no pickle involved."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _publish(tmp: Path, final: Path, step: int) -> None:
    """Seal a written checkpoint folder: the manifest (sha256 of every file) last, then an atomic rename of
    ``tmp`` to ``final`` (a previous ``final`` replaced), both directories fsynced."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    manifest = {"step": step, "files": {name: sha256_file(tmp / name) for name in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict, fault=None) -> Path:
    """Write checkpoint ``step`` atomically under ``root``; returns its folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        plain_rng, tensor_rng = rng_state()
        save_file(tensor_rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "rng": plain_rng}), encoding="utf-8")
        if fault is not None:
            fault.during_checkpoint(step)
        _publish(tmp, final, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_valid(ckpt: Path) -> bool:
    """A manifest is present and every file matches its checksum."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
        return all((ckpt / n).is_file() and sha256_file(ckpt / n) == h for n, h in files.items())
    except (ValueError, KeyError, OSError):
        return False


def find_latest_valid(root: Path) -> Path | None:
    """The newest valid checkpoint under ``root``; invalid ones are skipped with a warning."""
    if not root.is_dir():
        return None
    cands = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)
    for c in cands:
        if c.name.endswith(".tmp"):
            continue
        if is_valid(c):
            return c
        warn(f"ignoring checkpoint {c}: fails verification (manifest missing or a file's sha256 differs: damaged "
             "or half-written)")
    return None


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; returns the saved ``state`` dict."""
    from safetensors.torch import load_file

    if (ckpt / DCP_DIR).is_dir() or (ckpt / DS_DIR).is_dir() or _is_engine(model):
        return load_distributed_checkpoint(ckpt, model, optimizer, scheduler)
    tensors = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ValueError(f"checkpoint {ckpt} lacks trainable tensors {missing[:3]}: was it made by another config?")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    state = json.loads((ckpt / "state.json").read_text())
    set_rng_state(state.pop("rng"), load_file(str(ckpt / "rng.safetensors")))
    return state


DCP_DIR = "dcp"
DS_DIR = DS_CHECKPOINT_TAG  # DeepSpeed's partitioned files (engine.save_checkpoint's tag folder)


def _is_engine(model) -> bool:
    """A DeepSpeed engine (it checkpoints itself)."""
    return hasattr(model, "load_checkpoint") and hasattr(model, "zero_optimization_stage")


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)  # frozen tensors (LoRA's base) are rebuilt from the base


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_distributed_checkpoint(
    root: Path, step: int, model, optimizer, scheduler, state: dict, fault=None, engine=None
) -> Path:
    """Checkpoint ``step`` of a multi-process run (DDP, FSDP2 or a DeepSpeed ``engine``), written by every
    process together.

    Layout: ``dcp/`` (torch.distributed.checkpoint: each process writes its own shards of the trainable
    weights and the optimizer state; replicated DDP tensors are written once) or, for an ``engine``,
    ``deepspeed/`` (each process's ZeRO partition, ``engine.save_checkpoint``), ``rng-rank<R>.json`` +
    ``rng-rank<R>.safetensors`` (the RNG state of every process), ``scheduler.pt``, ``state.json`` and, last,
    ``manifest.json`` from the main process once all have finished. Atomic like :func:`save_checkpoint`.
    ``optimizer``: the torch optimizer (not a wrapper). A collective: every process must call it.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = _rank()
    final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    try:
        if engine is not None:
            from sftlab.train.zero import save_engine_state

            save_engine_state(engine, tmp)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options())
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
        plain_rng, tensor_rng = rng_state()
        save_file(tensor_rng, str(tmp / f"rng-rank{rank}.safetensors"))
        (tmp / f"rng-rank{rank}.json").write_text(json.dumps(plain_rng), encoding="utf-8")
        if rank == 0:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({**state, "world": world}), encoding="utf-8")
        if fault is not None:
            fault.during_checkpoint(step)
        _barrier()
        if rank == 0:
            _publish(tmp, final, step)
        _barrier()
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_distributed_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore a :func:`save_distributed_checkpoint` folder: each process loads its own shards (resharded by
    DCP when the process count changed; DeepSpeed needs the same count) and its own RNG state. ``model``: for
    a ``deepspeed/`` checkpoint, the DeepSpeed engine."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, world = _rank()
    state = json.loads((ckpt / "state.json").read_text())
    if (ckpt / DS_DIR).is_dir():
        from sftlab.train.zero import load_engine_state

        load_engine_state(model, ckpt, state.get("world"))
    elif _is_engine(model):
        raise ValueError(f"checkpoint {ckpt} was not written by a DeepSpeed run; resume it with the same train.distributed")
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options())
        both = {"model": model_sd, "optim": optim_sd}
        dcp.load(both, checkpoint_id=str(ckpt / DCP_DIR))
        set_state_dict(
            model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"],
            options=_state_dict_options(),
        )
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_rank = rank if (ckpt / f"rng-rank{rank}.json").is_file() else 0
    if rng_rank != rank or state.get("world", world) != world:
        warn(
            f"{ckpt} was written by {state.get('world')} processes, resumed by {world}: "
            "weights and optimizer are exact, random streams (dropout) are not"
        )
    set_rng_state(
        json.loads((ckpt / f"rng-rank{rng_rank}.json").read_text()),
        load_file(str(ckpt / f"rng-rank{rng_rank}.safetensors")),
    )
    state.pop("world", None)
    return state


def prune_checkpoints(root: Path, keep_last: int) -> None:
    if keep_last <= 0 or not root.is_dir():
        return
    valid = sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")
    )
    for old in valid[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
