"""sftlab's training attention: sdpa, with two CPU paths where the fused kernels are slow.

- **Packed rows** (``train.segment_attention``) never attend across a sequence boundary, on unmasked causal
  kernels. transformers isolates packed sequences on ``sdpa`` by building a block-diagonal mask from restarting
  position ids; with an explicit mask SDPA falls back to its slow masked kernel (measured here: packed rows ran
  at 0.7x of length-grouped padded batches). Here the segments of a micro-batch are gathered into right-padded
  ``[segments, longest, heads, dim]`` batches (right padding cannot leak into real tokens under causal
  attention), a few batches of similar lengths (within 2x), and each batch is one call. One call per layer and
  bucket, not per segment: SST-2 rows hold ~12 sequences each, and per-call overhead dominated. Results are
  gathered back in row order.
- **Short rows on CPU**: causal attention over at most ``MATH_MAX_LEN`` tokens (padded rows without a padding
  mask, segment buckets) runs as one ``baddbmm`` (scores, scaled, causal mask added) + float32 softmax + matmul
  (transformers' eager attention). SmolLM2-135M's shape (9 heads / 3 kv heads of 64), 8 rows, forward + backward
  of one layer: 2.4 ms at 75 tokens vs 6.3 (SDPA's math kernel) and 12.9 (flash); ~12 vs ~19 ms (flash) at 128
  and 144, ~20 vs ~27 at 176; from 192 tokens flash is as fast or faster (benchmarks/README.md).

Everything else (masks, dropout, a KV cache, GPUs, a sliding window shorter than the row, an additive position bias)
is plain ``sdpa``, with the mask transformers built. ``train()`` switches an ``sdpa`` model to ``SEGMENT_ATTENTION``
for segment attention, else on CPU to ``SFTLAB_ATTENTION`` (short rows only: packed rows keep transformers'
block mask), and back to ``sdpa`` when it ends or stops (``back_to_sdpa``). The choice is made per call inside
the model, so the recompute of activation checkpointing takes the same path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SEGMENT_ATTENTION = "sftlab_sdpa_segments"  # packed rows attend per segment (LossHead passes the segments)
SFTLAB_ATTENTION = "sftlab_sdpa"  # the same function without segments: short causal rows on CPU, else sdpa
MATH_MAX_LEN = 176  # causal attention up to this long on CPU: matmul + softmax; longer: SDPA's kernels
_registered = False


def segment_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """``query [B, Hq, T, D]``, ``key``/``value [B, Hkv, T, D]`` -> ``([B, T, Hq, D], None)``.

    ``kwargs["sftlab_segments"]``: a ``SegmentIndex`` (``segment_index(position_ids)``), or per row the
    ``(start, end)`` spans of its sequences (one SDPA call per span; positions outside every span get zeros).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.pop("sftlab_segments", None)
    if _changes_scores(kwargs, query.shape[2]):
        segments = None  # sdpa with transformers' mask (packed rows: block-diagonal, within the window)
    elif segments is None and _short_causal(module, query, key, attention_mask, dropout, is_causal):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return _causal_math(query, key, value, scale).transpose(1, 2).contiguous(), None
    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = key.shape[1] != query.shape[1]
    if isinstance(segments, SegmentIndex):
        return _attend_segments(query, key, value, segments, dropout, scaling), None
    out = query.new_zeros(query.shape)
    for b, row in enumerate(segments):
        for s, e in row:
            out[b : b + 1, :, s:e] = F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
    return out.transpose(1, 2).contiguous(), None


@dataclass(frozen=True)
class SegmentBucket:
    """Segments of similar length as one right-padded batch: segment ``i`` holds the flat positions
    (``row * T + t``) ``index[i, :length_i]``, padded with position 0; ``keep`` are the real entries of the
    flattened ``[segments * longest]`` layout and ``dest`` their flat positions."""

    index: torch.Tensor  # [S, L] long
    keep: torch.Tensor  # [n] long
    dest: torch.Tensor  # [n] long


@dataclass(frozen=True)
class SegmentIndex:
    """Gather indices for the sequence segments of packed rows, built once per micro-batch for all layers."""

    buckets: tuple[SegmentBucket, ...]
    order: torch.Tensor | None  # flat position -> its row in the buckets' concatenated outputs (None: in order)


def segment_index(position_ids: torch.Tensor, ratio: float = 2.0) -> SegmentIndex:
    """Segments start where the position id restarts at 0 (and at every row start; row-end padding is a
    segment of its own). Longest first, a new bucket starts at a segment shorter than ``1 / ratio`` of the
    bucket's longest, so padding inside a bucket stays below ``ratio``x.

    >>> seg = segment_index(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
    >>> [b.index.tolist() for b in seg.buckets], seg.order
    ([[[0, 1, 2], [3, 4, 0], [5, 6, 0], [7, 8, 9]]], None)
    """
    rows, width = position_ids.shape
    starts_mask = position_ids == 0
    starts_mask[:, 0] = True
    starts = starts_mask.reshape(-1).nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([rows * width]))
    groups: list[list[int]] = []
    longest = 0
    for i in sorted(range(len(starts)), key=lambda j: -int(lengths[j])):
        n = int(lengths[i])
        if not groups or n * ratio < longest:
            groups.append([])
            longest = n
        groups[-1].append(i)
    buckets = []
    device = position_ids.device
    for g in groups:
        sel = torch.tensor(sorted(g), device=device)
        st, ln = starts[sel], lengths[sel]
        steps = torch.arange(int(ln.max()), device=device)
        valid = steps[None, :] < ln[:, None]
        index = torch.where(valid, st[:, None] + steps[None, :], 0)
        keep = valid.reshape(-1).nonzero().squeeze(1)
        buckets.append(SegmentBucket(index, keep, index.reshape(-1)[keep]))
    order = None
    if len(buckets) > 1:
        dest = torch.cat([b.dest for b in buckets])
        order = torch.empty_like(dest)
        order[dest] = torch.arange(len(dest), device=device)
    return SegmentIndex(tuple(buckets), order)


class _Select(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward copies instead of accumulating: only the ``dst`` rows of the
    output carry gradient, back to the distinct rows ``src`` of ``x``. (autograd's own backward, a scatter-add
    over every element, took ~30% of a packed SST-2 step on CPU.) The other output rows (segment padding) must
    get exactly zero gradient, as they do under causal attention."""

    @staticmethod
    def forward(ctx, x, index, src, dst):
        ctx.save_for_backward(src, dst)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        src, dst = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        return out.index_copy_(0, src, grad.index_select(0, dst)), None, None, None


def _select(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return _Select.apply(x, index, src, dst) if torch.is_grad_enabled() and x.requires_grad else x[index]


def _changes_scores(kwargs: dict, n: int) -> bool:
    """Whether the layer asks for more than causal attention within a sequence: a sliding window shorter than the
    row (the mask holds it; Mistral, Gemma 3) or an additive position bias (what ``sdpa`` adds to the scores)."""
    window = kwargs.get("sliding_window")
    return kwargs.get("position_bias") is not None or (window is not None and window < n)


def _short_causal(module, query, key, attention_mask, dropout: float, is_causal: bool | None) -> bool:
    """Plain causal self-attention (no mask, no cache prefix, no dropout) over a few tokens, on CPU."""
    n = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (query.device.type == "cpu" and attention_mask is None and 1 < n <= MATH_MAX_LEN and key.shape[2] == n
            and causal and not (dropout and module.training))  # fmt: skip


def _causal_math(query, key, value, scale: float) -> torch.Tensor:
    """Causal attention as matmul + float32 softmax (transformers' eager attention): the scaling and the causal
    mask are folded into one ``baddbmm`` (1.5-2x faster than matmul, scale and ``masked_fill`` as three passes)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    b, h, n, d = query.shape
    future = torch.full((n, n), float("-inf"), dtype=query.dtype, device=query.device).triu(1)  # 0 on and below
    scores = torch.baddbmm(future, query.reshape(b * h, n, d), key.reshape(b * h, n, d).transpose(1, 2), alpha=scale)
    probs = scores.softmax(-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs.view(b, h, n, n), value)


def _attend_segments(query, key, value, seg: SegmentIndex, dropout: float, scaling) -> torch.Tensor:
    """Causal attention within every segment; ``query [B, Hq, T, D]`` -> ``[B, T, Hq, D]``."""
    b, hq, t, d = query.shape
    scale = scaling if scaling is not None else d**-0.5
    flat = [x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value)]  # views: [B*T, H, D]
    outs = []
    for bucket in seg.buckets:
        s, n = bucket.index.shape
        index = bucket.index.reshape(-1)
        q, k, v = (_select(x, index, bucket.dest, bucket.keep).view(s, n, -1, d).transpose(1, 2) for x in flat)
        if n <= MATH_MAX_LEN and not dropout and q.device.type == "cpu":
            o = _causal_math(q, k, v, scale)
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=k.shape[1] != hq
            )
        rows = torch.arange(len(bucket.keep), device=query.device)
        outs.append(_select(o.transpose(1, 2).reshape(s * n, hq, d), bucket.keep, bucket.keep, rows))
    if seg.order is None:
        return outs[0].view(b, t, hq, d)
    out = torch.cat(outs)
    return _select(out, seg.order, seg.order, torch.arange(len(seg.order), device=query.device)).view(b, t, hq, d)


@contextlib.contextmanager
def back_to_sdpa(model, switched: bool) -> Iterator[None]:
    """On leaving the block, however it is left, a ``model`` switched to sftlab's attention is ``sdpa`` again
    (what the saved model and any later use of it get)."""
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation("sdpa")


def register_segment_attention() -> None:
    """Make ``SEGMENT_ATTENTION`` and ``SFTLAB_ATTENTION`` valid ``attn_implementation`` names (masks as for
    ``sdpa``)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for name in (SEGMENT_ATTENTION, SFTLAB_ATTENTION):
        AttentionInterface.register(name, segment_attention_forward)
        AttentionMaskInterface.register(name, sdpa_mask)
    _registered = True


def segments_from_position_ids(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Spans of restarting position ids, per row.

    >>> segments_from_position_ids(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
    [[(0, 3), (3, 5)], [(0, 2), (2, 5)]]
    """
    rows = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        rows.append([(a, b) for a, b in zip(starts, starts[1:])])
    return rows
