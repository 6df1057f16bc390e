"""Attention for packed rows that never crosses a sequence boundary, on the fast SDPA kernels.

transformers isolates packed sequences on ``sdpa`` by building a block-diagonal mask from restarting
position ids; with an explicit mask SDPA falls back to its slow masked kernel (measured here: packed
rows ran at 0.7x of length-grouped padded batches). This backend instead runs causal SDPA on each
sequence segment of each row, so every call takes the fused ``is_causal`` path and no mask is read.
Without segments (evaluation, generation, padded batches) it is plain ``sdpa``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SEGMENT_ATTENTION = "sftlab_sdpa_segments"
_registered = False


def segment_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """``query [B, Hq, T, D]``, ``key``/``value [B, Hkv, T, D]`` -> ``([B, T, Hq, D], None)``.

    ``kwargs["sftlab_segments"]``: per row, the ``(start, end)`` spans of its sequences; positions outside
    every span (row-end padding) get zeros.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.pop("sftlab_segments", None)
    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = query.new_zeros(query.shape)
    gqa = key.shape[1] != query.shape[1]
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


def register_segment_attention() -> None:
    """Make ``SEGMENT_ATTENTION`` a valid ``attn_implementation`` (masks as for ``sdpa``)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention_forward)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
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
