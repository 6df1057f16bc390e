"""Token-normalised causal-LM loss, computed only at labelled positions and in vocabulary chunks.

The ``[tokens, vocab]`` logits tensor is never built whole: hidden states are gathered at positions that
have a label, then projected and scored ``chunk_size`` rows at a time, each chunk under activation
checkpointing so its logits are recomputed in backward instead of kept (peak memory ~ one chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sftlab.train.attention import SEGMENT_ATTENTION, segments_from_position_ids

IGNORE = -100


def _chunk_ce_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _uses_plain_head(model) -> bool:
    """Models whose logits are not just ``lm_head(hidden)`` (soft-capping, scaling) use the plain path."""
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))


def forward_loss_sum(
    model, batch: dict[str, torch.Tensor], chunk_size: int = 2048, drop_padding_mask: bool = False
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count.

    ``batch``: ``input_ids [B, T]``, ``shift_labels [B, T]`` (already shifted; -100 = no loss), and either
    ``attention_mask [B, T]`` (padded) or ``position_ids [B, T]`` (packed). Divide by the number of
    labelled tokens of the whole accumulation window (not of this micro-batch) for a token-normalised loss.
    """
    labels = batch["shift_labels"]
    mask = labels != IGNORE
    n = int(mask.sum())
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if "position_ids" in inputs and model.config._attn_implementation == SEGMENT_ATTENTION:
        inputs["sftlab_segments"] = segments_from_position_ids(inputs["position_ids"])
    if drop_padding_mask:
        # Right padding only: real tokens never attend to later positions, so under causal attention the
        # padding mask changes nothing for them, and without it SDPA takes its fused causal kernel.
        inputs.pop("attention_mask", None)
    # No KV cache in training; it also matters for correctness: transformers detects packed sequences
    # from restarting position ids only when no cache is passed, else packed sequences attend to each other.
    inputs["use_cache"] = False
    if _uses_plain_head(model):
        logits = model(**inputs).logits
        return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum"), n
    hidden = model.get_decoder()(**inputs).last_hidden_state  # [B, T, H]
    head = model.get_output_embeddings()
    h = hidden[mask]  # [N, H]
    y = labels[mask]  # [N]
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk_size):
        hs, ys = h[s : s + chunk_size], y[s : s + chunk_size]
        if torch.is_grad_enabled() and hs.requires_grad:
            total = total + checkpoint(_chunk_ce_sum, head, hs, ys, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(head, hs, ys)
    return total, n
