"""Parts of a step: gradient clipping that leaves gradients within the limit untouched (train/backends/base.py),
freed memory kept in the process on CPU (train/allocator.py), and the model prepared for training (train/loop.py)."""

from __future__ import annotations

import resource

import pytest
import torch

from sftlab.config import TrainConfig
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.allocator import glibc, keep_freed_memory
from sftlab.train.backends.base import Backend
from sftlab.train.loop import build_accelerator


def with_grads(model, scale: float):
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scale
    return model


@pytest.mark.parametrize(("max_norm", "scale", "clipped"), [(0.0, 1.0, False), (1e6, 1.0, False), (0.5, 1.0, True)])
def test_clip_equals_torch_clip_and_leaves_gradients_within_the_limit_untouched(max_norm, scale, clipped):
    t = TrainConfig(max_grad_norm=max_norm)
    backend = Backend(build_accelerator("fp32", t), t)
    backend.prepare(with_grads(build_tiny_llama(64, seed=0), scale))
    ref = with_grads(build_tiny_llama(64, seed=0), scale)
    want = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), max_norm or float("inf"))
    versions = [p.grad._version for p in backend.params]
    got = backend.clip_grad_norm()
    assert got == float(want) > 0
    for p, q in zip(backend.lm.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)  # bitwise what torch's clip_grad_norm_ gives
    changed = [p.grad._version != v for p, v in zip(backend.params, versions, strict=True)]
    assert all(changed) if clipped else not any(changed)  # the control: clipping does write every gradient


def minor_faults(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def activations(n: int = 48, size: int = 1 << 20) -> None:
    """Allocate 48 MB in 1 MB tensors (12,288 pages of 4 KB), use them, free them: a step's activations."""
    blocks = [torch.ones(size, dtype=torch.uint8) for _ in range(n)]
    del blocks


@pytest.mark.skipif(glibc() is None, reason="keep_freed_memory acts on glibc only")
def test_freed_memory_is_reused_without_page_faults_within_the_block():
    with keep_freed_memory(torch.device("cpu")) as kept:
        assert kept
        activations()
        # the same pages again; the median of 5, as a heap fragmented by earlier work can map a few MB once more
        faults = sorted(minor_faults(activations) for _ in range(5))
        assert faults[2] < 1000, faults
    # the control: leaving the block gives the memory back, so the same work maps (and faults) it in again
    assert minor_faults(activations) > 6000
    with keep_freed_memory(torch.device("meta")) as kept:
        assert not kept  # only CPU training


@pytest.mark.parametrize("checkpointing", [False, True])
def test_prepare_model_turns_on_activation_checkpointing_without_deprecation_warning(checkpointing):
    import warnings

    from sftlab.config import load_config
    from sftlab.train.loop import prepare_model

    lm = build_tiny_llama(64, seed=0)
    cfg = load_config(None, [f"model.gradient_checkpointing={str(checkpointing).lower()}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' deprecated gradient_checkpointing_enable
        assert prepare_model(lm, cfg, torch.device("cpu"))  # sdpa on CPU: sftlab's attention
    assert lm.is_activation_checkpointing == checkpointing and lm.training


@pytest.mark.parametrize(("sets", "device", "impl"), [
    ([], "cpu", "sftlab_sdpa"),  # short rows on CPU
    (["data.packing=true"], "cpu", "sftlab_sdpa"),  # packed rows keep transformers' block mask ...
    (["data.packing=true", "train.segment_attention=true"], "cpu", "sftlab_sdpa_segments"),  # ... unless asked
    (["data.packing=true", "train.segment_attention=true"], "meta", "sftlab_sdpa_segments"),
    ([], "meta", "sdpa"),  # off CPU, without segment attention: plain sdpa
])
def test_prepare_model_picks_the_attention(sets, device, impl):
    from sftlab.config import load_config
    from sftlab.train.loop import prepare_model

    lm = build_tiny_llama(64, seed=0)
    assert prepare_model(lm, load_config(None, sets), torch.device(device)) == (impl != "sdpa")
    assert lm.config._attn_implementation == impl
