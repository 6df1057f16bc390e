"""Packed padding-free batches == each sequence alone (losses and gradients), on sdpa and eager.

Tolerance: float32, rtol 1e-4 / atol 1e-5 on summed losses and on gradients (float reordering only).
"""

from __future__ import annotations

import random

import pytest
import torch

from sftlab.model.tiny import build_tiny_llama
from sftlab.train.attention import SEGMENT_ATTENTION, SFTLAB_ATTENTION, register_segment_attention
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
    if impl in (SEGMENT_ATTENTION, SFTLAB_ATTENTION):
        register_segment_attention()
    model.set_attn_implementation(impl)


def assert_same(a, b):
    assert a[1] == b[1]
    assert a[0] == pytest.approx(b[0], rel=1e-4)
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("impl", ["sdpa", "eager", SEGMENT_ATTENTION, SFTLAB_ATTENTION])
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


def test_short_padded_rows_take_matmul_softmax_on_cpu_with_the_same_result(monkeypatch):
    """Padded CPU rows (no padding mask) of at most MATH_MAX_LEN tokens run as matmul + softmax inside sftlab's
    attention, longer rows and masked batches on SDPA; loss and gradients equal sdpa's, with activation
    checkpointing too (its recompute calls the same attention)."""
    from sftlab.train import attention

    calls = []
    plain = attention._causal_math
    monkeypatch.setattr(attention, "_causal_math", lambda *a: calls.append(a[0].shape[2]) or plain(*a))
    exs = examples(seed=2)
    batch = collate_padded(exs, pad_id=0)
    width = batch["input_ids"].shape[1]
    for checkpointing in (False, True):
        model = build_tiny_llama(VOCAB, seed=3)
        ref = loss_and_grads(model, batch, drop_padding_mask=True)  # sdpa
        set_impl(model, SEGMENT_ATTENTION)
        if checkpointing:
            model.activation_checkpointing_enable()
        calls.clear()
        got = loss_and_grads(model, batch, drop_padding_mask=True)
        assert calls and set(calls) == {width}  # every layer took the short path (twice with the recompute)
        assert len(calls) == model.config.num_hidden_layers * (2 if checkpointing else 1)
        assert_same(got, ref)
        calls.clear()
        assert_same(loss_and_grads(model, batch), ref)
        assert not calls  # with the padding mask: SDPA
        monkeypatch.setattr(attention, "MATH_MAX_LEN", width - 1)  # rows longer than the limit: SDPA
        loss_and_grads(model, batch, drop_padding_mask=True)
        assert not calls
        monkeypatch.setattr(attention, "MATH_MAX_LEN", 192)


def tiny_mistral(window):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(3)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                        max_position_embeddings=64, attn_implementation="sdpa")  # fmt: skip
    return MistralForCausalLM(cfg)


@pytest.mark.parametrize("impl", [SEGMENT_ATTENTION, SFTLAB_ATTENTION])
@pytest.mark.parametrize("packed", [True, False])
def test_a_sliding_window_shorter_than_the_row_is_kept(impl, packed):
    """Mistral's window of 4 tokens: sftlab's attention leaves such layers to sdpa and transformers' mask, packed
    (block-diagonal and windowed) or padded; the control: the same weights without the window give another loss."""
    exs = examples(seed=4)
    if packed:
        batch = collate_packed([[exs[i] for i in b] for b in pack_bfd([len(e["input_ids"]) for e in exs], 48)], 0)
    else:
        batch = collate_padded(exs, pad_id=0)
    kw = {} if packed else {"drop_padding_mask": True}
    model = tiny_mistral(4)
    ref = loss_and_grads(model, batch, **kw)  # sdpa
    unwindowed = tiny_mistral(None)
    assert abs(loss_and_grads(unwindowed, batch, **kw)[0] - ref[0]) > 1e-3 * abs(ref[0])  # the window matters here
    set_impl(model, impl)
    assert_same(loss_and_grads(model, batch, **kw), ref)


def test_an_additive_position_bias_goes_to_sdpa():
    """A layer that passes ``position_bias`` (added to the scores by ``sdpa``) gets sdpa, not the short-row path."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sftlab.train.attention import segment_attention_forward

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 10, 10, generator=g)
    module = SimpleNamespace(is_causal=True, training=False, num_key_value_groups=1)
    ref = sdpa_attention_forward(module, q, k, v, None, position_bias=bias)[0]
    torch.testing.assert_close(segment_attention_forward(module, q, k, v, None, position_bias=bias)[0], ref)
    assert not torch.allclose(segment_attention_forward(module, q, k, v, None)[0], ref, atol=1e-3)  # the control
