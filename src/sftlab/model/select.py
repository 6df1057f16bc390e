"""Selective training without adapters: freeze everything but the parameters a preset or pattern names.

Presets (N = number of transformer blocks, blocks 0-based):
- ``ffn_middle_band``: the FFN up / down projections of blocks with 1-based index in (N/4, N/2]
  (CoFiTune's coarse setting, Zhang et al. 2024: better versatility than full fine-tuning).
- ``attention_only`` / ``ffn_only``: every block's attention / FFN.
- ``half``: Half Fine-Tuning (Hui et al. 2024): in each block a seeded random half of the weight matrices
  is trained, the other half frozen; block norms, embeddings and head stay trainable.
- ``last_n_layers``: the last ``last_n`` blocks and the final norm.
``include`` / ``exclude`` regexes and a ``layers`` range refine any preset (or stand alone).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from sftlab.config import ConfigError, SelectConfig
from sftlab.model.load import param_numel

LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
ATTN_RE = re.compile(r"\.(self_attn|attention|attn)\.")
FFN_RE = re.compile(r"\.(mlp|feed_forward|ffn)\.")


def layer_index(name: str) -> int | None:
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def parse_layers(spec: str, n_layers: int) -> set[int]:
    """``"2-5"`` -> {2, 3, 4, 5}; ``"0.25-0.5"`` -> blocks with 1-based index in (N/4, N/2]; ``"3"`` -> {3}.

    >>> sorted(parse_layers("0.25-0.5", 8)), sorted(parse_layers("2-4", 8))
    ([2, 3], [2, 3, 4])
    """
    lo, _, hi = spec.partition("-")
    hi = hi or lo
    try:
        if "." in lo or "." in hi:
            a, b = float(lo) * n_layers, float(hi) * n_layers
            return {i for i in range(n_layers) if a < i + 1 <= b}
        return set(range(int(lo), int(hi) + 1)) & set(range(n_layers))
    except ValueError:
        raise ConfigError(f"select.layers: {spec!r} is not a range like '8-15' or '0.25-0.5'") from None


def select_trainable(names: list[str], n_layers: int, cfg: SelectConfig, shapes: dict[str, tuple]) -> set[str]:
    """Names of the parameters to train, from a preset, patterns and a layer range."""
    chosen: set[str]
    if cfg.preset == "ffn_middle_band":
        band = parse_layers("0.25-0.5", n_layers)
        chosen = {n for n in names if layer_index(n) in band and FFN_RE.search(n) and re.search(r"(up|down)_proj", n)}
    elif cfg.preset == "attention_only":
        chosen = {n for n in names if ATTN_RE.search(n)}
    elif cfg.preset == "ffn_only":
        chosen = {n for n in names if FFN_RE.search(n)}
    elif cfg.preset == "last_n_layers":
        last = set(range(max(0, n_layers - cfg.last_n), n_layers))
        chosen = {n for n in names if layer_index(n) in last or re.search(r"(^|\.)norm\.weight$", n)}
    elif cfg.preset == "half":
        rng = random.Random(cfg.seed)
        chosen = {n for n in names if layer_index(n) is None or len(shapes[n]) < 2}
        by_layer = defaultdict(list)
        for n in names:
            if layer_index(n) is not None and len(shapes[n]) >= 2:
                by_layer[layer_index(n)].append(n)
        for _, mats in sorted(by_layer.items()):
            mats = sorted(mats)
            rng.shuffle(mats)
            chosen |= set(mats[: len(mats) // 2])
    else:
        chosen = set(names) if not cfg.include else set()
    if cfg.include:
        pats = [re.compile(p) for p in cfg.include]
        chosen = (chosen if cfg.preset != "none" else set(names)) & {n for n in names if any(p.search(n) for p in pats)}
    if cfg.layers:
        keep = parse_layers(cfg.layers, n_layers)
        chosen = {n for n in chosen if layer_index(n) in keep}
    if cfg.exclude:
        pats = [re.compile(p) for p in cfg.exclude]
        chosen = {n for n in chosen if not any(p.search(n) for p in pats)}
    return chosen


def is_active(cfg: SelectConfig) -> bool:
    return cfg.preset != "none" or bool(cfg.include or cfg.exclude or cfg.layers)


def apply_selection(model, cfg: SelectConfig) -> set[str]:
    """Set ``requires_grad`` by the selection; returns the trained names. Errors when nothing matches."""
    names = [n for n, _ in model.named_parameters()]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    n_layers = model.config.num_hidden_layers
    chosen = select_trainable(names, n_layers, cfg, shapes)
    if not chosen:
        raise ConfigError(
            f"select: no parameter matches preset={cfg.preset!r}, include={list(cfg.include)}, "
            f"layers={cfg.layers!r} (parameter names look like {names[len(names) // 2]!r})"
        )
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return chosen


def group_of(name: str) -> str:
    """A readable module group for the trainable-parameter table."""
    if "lora_" in name or "modules_to_save" in name:
        return "adapters"
    if "embed" in name or "wte" in name:
        return "embeddings"
    if "lm_head" in name:
        return "head"
    if ATTN_RE.search(name):
        return "attention"
    if FFN_RE.search(name):
        return "ffn"
    if "norm" in name:
        return "norms"
    return "other"


def trainable_table(model) -> list[dict]:
    """Rows ``{group, trainable, total, percent}`` plus a ``total`` row (shared tensors counted once)."""
    seen, groups = set(), defaultdict(lambda: [0, 0])
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        g = groups[group_of(name)]
        g[1] += param_numel(p)
        if p.requires_grad:
            g[0] += param_numel(p)
    rows = [
        {"group": k, "trainable": v[0], "total": v[1], "percent": round(100 * v[0] / max(v[1], 1), 3)}
        for k, v in sorted(groups.items())
    ]
    t, a = sum(r["trainable"] for r in rows), sum(r["total"] for r in rows)
    rows.append({"group": "total", "trainable": t, "total": a, "percent": round(100 * t / max(a, 1), 3)})
    return rows


def format_trainable_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="trainable parameters")
    for col in ("group", "trainable", "total", "%"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for r in rows:
        table.add_row(r["group"], f"{r['trainable']:,}", f"{r['total']:,}", f"{r['percent']:.2f}")
    return table
