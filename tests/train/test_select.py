"""Selective training: exactly the chosen parameters change; the rest stay bitwise equal; no optimizer state."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from sftlab.config import SelectConfig, load_config
from sftlab.model.select import apply_selection, trainable_table
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.loop import train
from sftlab.train.optim import build_optimizer

VOCAB = 64


def tiny8():
    return build_tiny_llama(VOCAB, seed=0, num_hidden_layers=8, tie_word_embeddings=False)


def data():
    rng = random.Random(0)
    ids = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(6, 20))] for _ in range(16)]
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "length": [len(x) for x in ids]})


EXPECTED = {
    # 8 blocks: 1-based (2, 4] -> 0-based blocks 2 and 3, up/down projections only
    "ffn_middle_band": lambda n: any(f"layers.{i}.mlp.{p}_proj" in n for i in (2, 3) for p in ("up", "down")),
    "attention_only": lambda n: ".self_attn." in n,
    "ffn_only": lambda n: ".mlp." in n,
    "last_n_layers": lambda n: any(f"layers.{i}." in n for i in (6, 7)) or n == "model.norm.weight",
}


@pytest.mark.parametrize("preset", [*EXPECTED, "half"])
def test_preset_changes_exactly_the_selected_parameters(tmp_path, preset):
    model = tiny8()
    chosen = apply_selection(model, SelectConfig(preset=preset, seed=1))
    names = [n for n, _ in model.named_parameters()]
    if preset in EXPECTED:
        assert chosen == {n for n in names if EXPECTED[preset](n)}
    else:  # half: per block, half of the matrices; everything outside blocks and 1-d params trained
        for i in range(8):
            mats = [n for n, p in model.named_parameters() if f"layers.{i}." in n and p.ndim == 2]
            assert sum(n in chosen for n in mats) == len(mats) // 2
        assert {n for n in names if "layers." not in n} <= chosen
        assert chosen != apply_selection(tiny8(), SelectConfig(preset="half", seed=2))
    optimizer = build_optimizer(model, load_config(None).train)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in chosen}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = load_config(
        None,
        [
            "train.progress=false",
            "train.max_steps=3",
            "train.lr=1e-2",
            "train.micro_batch_size=4",
            "train.weight_decay=0.1",
        ],
    )

    class Tok:
        pad_token_id = 0

    train(cfg, model, Tok(), data(), output_dir=tmp_path)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == chosen


def test_include_exclude_layers():
    model = tiny8()
    chosen = apply_selection(model, SelectConfig(include=(r"q_proj", r"o_proj"), exclude=(r"o_proj",), layers="0-1"))
    assert chosen == {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
    rows = {r["group"]: r for r in trainable_table(model)}
    assert rows["attention"]["trainable"] == 2 * 64 * 64
    assert rows["total"]["trainable"] == 2 * 64 * 64


def test_nothing_matches_is_an_error():
    from sftlab.config import ConfigError

    with pytest.raises(ConfigError, match="no parameter matches"):
        apply_selection(tiny8(), SelectConfig(include=("nonexistent",)))
