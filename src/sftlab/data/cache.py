"""On-disk cache of tokenised datasets, keyed by everything that decides their content.

Key = hash of: data files' content hashes (or the dataset fingerprint of saved / hub data), every source
option, the tokenizer (vocabulary, merges, normaliser, special tokens), the chat template text, mask
policy, max_seq_len, truncation, on_error, and the sftlab code version (package version + a hash of the
data code and templates, so editing them re-tokenises). Entries are written to a temporary folder and
renamed, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from sftlab import __version__


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the data code and built-in templates."""
    h = hashlib.sha256(__version__.encode())
    pkg = resources.files("sftlab")
    for folder, suffix in (("data", ".py"), ("templates", ".jinja")):
        for name, item in _files(pkg.joinpath(folder), folder):  # subpackages too (data/clean/)
            if name.endswith(suffix):
                h.update(name.encode() + item.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def _files(folder, prefix: str):
    """(relative name, file) under ``folder``, recursively, in name order."""
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        name = f"{prefix}/{item.name}"
        if item.is_dir():
            yield from _files(item, name)
        else:
            yield name, item


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the backend tokenizer (minus transient truncation/padding state) and
    the special tokens. The chat template is keyed separately (as the template text actually used)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        body = json.dumps(state, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(
        {"map": tokenizer.special_tokens_map, "class": type(tokenizer).__name__}, sort_keys=True, default=str
    )
    return sha(body + specials)


def cache_key(parts: dict[str, Any]) -> str:
    """Stable hash of the key parts (dataclasses and sets allowed)."""

    def plain(x):
        if dataclasses.is_dataclass(x):
            return dataclasses.asdict(x)
        if isinstance(x, (set, frozenset)):
            return sorted(x)
        return str(x)

    return sha(json.dumps({"code": code_version(), **parts}, sort_keys=True, default=plain))[:24]


def entry_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / "tokenized" / key


def load_entry(cache_dir: str | os.PathLike, key: str):
    """(dataset, report dict, removed-records file) of a cache entry, or None when absent or unreadable."""
    from datasets import load_from_disk

    d = entry_dir(cache_dir, key)
    if not (d / "complete").is_file():
        return None
    try:
        return (
            load_from_disk(str(d / "dataset")),
            json.loads((d / "report.json").read_text()),
            d / "removed.jsonl",
        )
    except Exception:  # a damaged entry is rebuilt, never trusted
        return None


def save_entry(cache_dir: str | os.PathLike, key: str, dataset, report: dict, removed_file: Path | None):
    """Write an entry atomically and return the dataset loaded back from it (memory-mapped)."""
    from datasets import load_from_disk

    final = entry_dir(cache_dir, key)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    dataset.save_to_disk(str(tmp / "dataset"))
    (tmp / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if removed_file is not None and removed_file.is_file():
        shutil.copyfile(removed_file, tmp / "removed.jsonl")
    else:
        (tmp / "removed.jsonl").write_text("", encoding="utf-8")
    (tmp / "complete").write_text("1")
    if final.exists():  # another process built the same entry meanwhile, or a damaged one is replaced
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(final / "dataset"))
