"""Packed padding-free batches == each sequence alone (losses and gradients), on sdpa and eager.

Tolerance: float32, rtol 1e-4 / atol 1e-5 on summed losses and on gradients (float reordering only).
"""

from __future__ import annotations

import random

import pytest
import torch

from sftlab.model.tiny import build_tiny_llama
from sftlab.train.attention import SEGMENT_ATTENTION, register_segment_attention
from sftlab.train.batches import collate_packed, collate_padded, pack_bfd
from sftlab.train.loss import forward_loss_sum

VOCAB = 128


def examples(seed=0, n=7):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 30)
        ids = [rng.randrange(4, VOCAB) for _ in range(length)]
        cut = rng.randint(0, length - 2)
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def loss_and_grads(model, batch, **kw):
    model.zero_grad()
    loss, n = forward_loss_sum(model, batch, **kw)
    loss.backward()
    return float(loss.detach()), n, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def alone(model, exs):
    """Reference: every sequence in its own forward pass, losses summed, gradients accumulated."""
    model.zero_grad()
    total, count = 0.0, 0
    for e in exs:
        loss, n = forward_loss_sum(model, collate_padded([e], pad_id=0))
        loss.backward()
        total += float(loss.detach())
        count += n
    return total, count, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def set_impl(model, impl):
    if impl == SEGMENT_ATTENTION:
        register_segment_attention()
    model.set_attn_implementation(impl)


def assert_same(a, b):
    assert a[1] == b[1]
    assert a[0] == pytest.approx(b[0], rel=1e-4)
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("impl", ["sdpa", "eager", SEGMENT_ATTENTION])
def test_packed_equals_each_sequence_alone(impl):
    model = build_tiny_llama(VOCAB, seed=3)
    exs = examples()
    ref = alone(model, exs)
    set_impl(model, impl)
    bins = pack_bfd([len(e["input_ids"]) for e in exs], max_len=48)
    assert len(bins) > 1 and any(len(b) > 1 for b in bins)  # several rows, several sequences per row
    batch = collate_packed([[exs[i] for i in b] for b in bins], pad_id=0)
    assert_same(loss_and_grads(model, batch), ref)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_padded_without_mask_equals_alone(impl):
    model = build_tiny_llama(VOCAB, seed=3)
    exs = examples(seed=1)
    ref = alone(model, exs)
    set_impl(model, impl)
    batch = collate_padded(exs, pad_id=0)
    assert_same(loss_and_grads(model, batch, drop_padding_mask=True), ref)
    assert_same(loss_and_grads(model, batch), ref)


def test_negative_control_cross_attention_fails():
    """Same packed rows, but with a full attention mask (sequences see each other): must differ."""
    model = build_tiny_llama(VOCAB, seed=3)
    exs = examples()
    ref = alone(model, exs)
    bins = pack_bfd([len(e["input_ids"]) for e in exs], max_len=48)
    batch = collate_packed([[exs[i] for i in b] for b in bins], pad_id=0)
    leaky = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))
    got = loss_and_grads(model, leaky)
    with pytest.raises(AssertionError):
        assert_same(got, ref)


def test_chunked_loss_equals_plain_loss():
    model = build_tiny_llama(VOCAB, seed=5)
    exs = examples(seed=2)
    batch = collate_padded(exs, pad_id=0)
    small = loss_and_grads(model, batch, chunk_size=7)  # many chunks, with checkpointing
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), batch["shift_labels"].reshape(-1), ignore_index=-100, reduction="sum"
    )
    plain.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    n = int((batch["shift_labels"] != -100).sum())
    assert_same(small, (float(plain.detach()), n, grads))


def test_pack_bfd_every_sequence_once_and_fill():
    rng = random.Random(0)
    lengths = [rng.randint(1, 600) for _ in range(2000)]
    bins = pack_bfd(lengths, 512)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    for b in bins:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 512
    assert pack_bfd(lengths, 512) == bins  # deterministic
    fill = sum(min(x, 512) for x in lengths) / (512 * len(bins))
    assert fill > 0.95


def test_compiled_layers_match_eager():
    """``train.compile``: compiled decoder layers give the eager losses and gradients (float32, reordering only),
    and a second batch shape runs without error (dynamic shapes)."""
    from sftlab.train.loop import compile_layers

    exs = examples(seed=5, n=4)
    eager = build_tiny_llama(VOCAB, seed=2)
    compiled = build_tiny_llama(VOCAB, seed=2)
    assert compile_layers(compiled) == len(compiled.model.layers)
    for batch in (collate_padded(exs, pad_id=0), collate_packed([exs[:2], exs[2:]], pad_id=0)):
        assert_same(loss_and_grads(compiled, batch), loss_and_grads(eager, batch))


def test_short_padded_rows_take_the_math_kernel_with_the_same_result():
    """Padded CPU rows of at most MATH_MAX_LEN tokens run SDPA's math kernel (faster there than flash); longer
    rows and non-sdpa models are left alone; the loss and gradients equal the flash kernel's."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sftlab.train.attention import MATH_MAX_LEN, short_rows_attention

    model = build_tiny_llama(VOCAB, seed=3)
    set_impl(model, "sdpa")
    short, long = torch.zeros(2, MATH_MAX_LEN, dtype=torch.long), torch.zeros(2, MATH_MAX_LEN + 1, dtype=torch.long)
    assert not isinstance(short_rows_attention(model, short), contextlib.nullcontext)
    assert isinstance(short_rows_attention(model, long), contextlib.nullcontext)
    set_impl(model, "eager")
    assert isinstance(short_rows_attention(model, short), contextlib.nullcontext)
    set_impl(model, "sdpa")
    model.activation_checkpointing_enable()
    assert isinstance(short_rows_attention(model, short), contextlib.nullcontext)  # recompute would take flash
    model.activation_checkpointing_disable()
    batch = collate_padded(examples(seed=2), pad_id=0)
    got = loss_and_grads(model, batch, drop_padding_mask=True)  # the math kernel
    from sftlab.train import attention

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        saved, attention.MATH_MAX_LEN = attention.MATH_MAX_LEN, 0  # the padded path leaves the kernel alone
        try:
            flash = loss_and_grads(model, batch, drop_padding_mask=True)
        finally:
            attention.MATH_MAX_LEN = saved
    assert_same(got, flash)
