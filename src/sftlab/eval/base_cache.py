"""Scores of the base model, kept on disk so a sweep scores its untouched base once per task, not once per run.

A cached result is found only under a key of everything that decides it: the task (every field), the sha256
of its data file, the base's weights (a checksum of every parameter), its config, the chat template the
prompts are rendered with, the batch size and the precision. Any change misses the cache and scores again.
Perplexity tasks with a KL to the base need the base's logits next to the model's and are never cached.
Entries are written atomically (``KEY.json``); a damaged entry is scored again and replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sftlab.config import TaskConfig
from sftlab.eval.items import hash_file


@dataclass(frozen=True)
class BaseCache:
    """Where base scores live and the precision they were scored under."""

    dir: Path
    precision: str = "fp32"


@torch.no_grad()
def model_fingerprint(model) -> str:
    """sha256 over the config and one float64 sum and a strided sample per parameter: any change of weights
    (a different checkpoint, a merged adapter) changes it."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode("utf-8"))
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)].double()
        h.update(name.encode("utf-8"))
        h.update(torch.stack([flat.double().sum(), (sample * torch.arange(1, sample.numel() + 1)).sum()]).numpy().tobytes())
    return h.hexdigest()


def cache_key(task: TaskConfig, fingerprint: str, template: str | None, batch_size: int, precision: str) -> str:
    fields = {k: v for k, v in dataclasses.asdict(task).items() if k not in ("name", "role")}  # labels only
    blob = json.dumps(
        {"task": fields, "data": hash_file(task.path) if task.path else None, "model": fingerprint,
         "template": template or "", "batch_size": batch_size, "precision": precision, "format": 1},
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def load_entry(cache: BaseCache, key: str) -> dict | None:
    path = cache.dir / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_entry(cache: BaseCache, key: str, result: dict) -> None:
    cache.dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(tmp, cache.dir / f"{key}.json")
    except OSError:
        Path(tmp).unlink(missing_ok=True)  # a cache that cannot be written only costs time


def cached_base_score(cache: BaseCache | None, task: TaskConfig, model, tokenizer, batch_size: int, score) -> dict:
    """``score()`` (the base's result on ``task``), or the cached result of an identical earlier call."""
    if cache is None:
        return score()
    key = cache_key(task, model_fingerprint(model), getattr(tokenizer, "chat_template", None), batch_size,
                    cache.precision)  # fmt: skip
    hit = load_entry(cache, key)
    if hit is not None:
        return hit
    result = score()
    store_entry(cache, key, result)
    return result
