"""Frozen linear weights cast once per train() (train/frozen.py): bitwise the same results, fewer casts."""

from __future__ import annotations

import torch

from sftlab.config import LoraConfig
from sftlab.model.adapters import apply_lora
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.batches import collate_padded
from sftlab.train.frozen import frozen_linears_cast
from sftlab.train.loss import forward_loss_sum

VOCAB = 96


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (3, 17), generator=g).tolist()
    return collate_padded([{"input_ids": x, "labels": x} for x in ids], pad_id=0)


def loss_and_grads(model, dtype):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss, _ = forward_loss_sum(model, batch())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def lora_model():
    torch.manual_seed(0)
    return apply_lora(build_tiny_llama(VOCAB, seed=1), LoraConfig(enabled=True, r=4, dropout=0.0))


def test_lora_base_cast_once_gives_bitwise_equal_loss_and_gradients():
    model = lora_model()
    frozen = [m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad]
    for dtype in (torch.bfloat16, torch.float32):
        ref = loss_and_grads(model, dtype)
        with frozen_linears_cast(model) as n:
            assert n == len(frozen) > 0  # every frozen base layer (and the tied head) takes the cached cast
            assert all("forward" in m.__dict__ for m in frozen)
            got = loss_and_grads(model, dtype)
            again = loss_and_grads(model, dtype)  # the cached copy is reused
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[0], again[0])
        assert ref[1].keys() == got[1].keys() and len(ref[1]) > 0
        for k in ref[1]:
            assert torch.equal(ref[1][k], got[1][k]), k
    assert not any("forward" in m.__dict__ for m in frozen)  # undone when the block ends


def test_cached_copy_is_really_used_and_trained_weights_are_left_alone():
    model = lora_model()
    with frozen_linears_cast(model):
        ref = loss_and_grads(model, torch.bfloat16)
        layer = next(m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad
                     and m.forward.low is not None)  # fmt: skip
        layer.forward.low.mul_(0)  # negative control: the forward pass reads the copy, so the loss changes
        assert not torch.equal(ref[0], loss_and_grads(model, torch.bfloat16)[0])
    full = build_tiny_llama(VOCAB, seed=1)  # full fine-tuning: nothing is frozen, nothing is cached
    with frozen_linears_cast(full) as n:
        assert n == 0
    with frozen_linears_cast(lora_model(), enabled=False) as n:
        assert n == 0
