"""Token-normalised causal-LM loss, computed only at labelled positions and in vocabulary chunks.

The ``[tokens, vocab]`` logits tensor is never built whole: hidden states are gathered at positions that
have a label, then projected and scored ``chunk_size`` rows at a time (fewer for large vocabularies:
``CHUNK_ELEMENTS``), each chunk under activation checkpointing so its logits are recomputed in backward instead
of kept (peak memory ~ one chunk); when the logits of the whole micro-batch are small (``KEEP_LOGITS_MAX``) they
are kept instead, as recomputing them costs time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sftlab.train.attention import SEGMENT_ATTENTION, segment_index

IGNORE = -100
# Logits elements (labelled tokens x vocab) of one chunk at most: 2**24 = 64 MB in float32, 2,048 rows at vocab
# 8,192 but 333 at 50,257 (half the peak memory of 2,048 rows there, measured: 0.8 vs 1.6 GB at 8 x 512 tokens).
CHUNK_ELEMENTS = 2**24
# Up to this many logits elements for the whole micro-batch, the chunks' logits are kept for backward instead of
# recomputed (a head matmul saved; measured on CPU: ~3% faster steps at 8 x 512 tokens, vocab 8,192).
KEEP_LOGITS_MAX = 2**24


def _chunk_ce_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _uses_plain_head(model) -> bool:
    """Models whose logits are not just ``lm_head(hidden)`` (soft-capping, scaling) use the plain path."""
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))


class LossHead(torch.nn.Module):
    """The causal LM plus its loss, as one module: what the training loop (and DDP / FSDP) wraps.

    Its ``forward`` runs the decoder and the chunked cross-entropy, so a distributed wrapper around it
    sees every forward pass (DDP needs that to synchronise gradients). Parameters are the LM's own.
    """

    def __init__(self, lm: torch.nn.Module, chunk_size: int = 2048):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size

    def forward(self, input_ids, shift_labels, attention_mask=None, position_ids=None, drop_padding_mask=False):
        lm = self.lm
        mask = shift_labels != IGNORE
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if position_ids is not None and lm.config._attn_implementation == SEGMENT_ATTENTION:
            inputs["sftlab_segments"] = segment_index(position_ids)
        if drop_padding_mask:
            # Right padding only: real tokens never attend to later positions, so under causal attention the
            # padding mask changes nothing for them, and without it SDPA takes its fused causal kernel.
            inputs.pop("attention_mask", None)
        # No KV cache in training; it also matters for correctness: transformers detects packed sequences
        # from restarting position ids only when no cache is passed, else packed sequences attend to each other.
        inputs["use_cache"] = False
        if _uses_plain_head(lm):
            logits = lm(**inputs).logits
            return F.cross_entropy(logits[mask].float(), shift_labels[mask], reduction="sum")
        hidden = lm.get_decoder()(**inputs).last_hidden_state  # [B, T, H]
        head = lm.get_output_embeddings()
        h = hidden[mask]  # [N, H]
        y = shift_labels[mask]  # [N]
        total = hidden.new_zeros((), dtype=torch.float32)
        vocab = getattr(lm.config, "vocab_size", None)
        rows = min(self.chunk_size, max(64, CHUNK_ELEMENTS // vocab)) if vocab else self.chunk_size
        # small logits (all chunks together) are kept for backward: recomputing them costs a head matmul
        recompute = not vocab or h.shape[0] * vocab > KEEP_LOGITS_MAX
        for s in range(0, h.shape[0], rows):
            hs, ys = h[s : s + rows], y[s : s + rows]
            if recompute and torch.is_grad_enabled() and hs.requires_grad:
                total = total + checkpoint(_chunk_ce_sum, head, hs, ys, use_reentrant=False)
            else:
                total = total + _chunk_ce_sum(head, hs, ys)
        return total


def forward_loss_sum(
    model, batch: dict[str, torch.Tensor], chunk_size: int = 2048, drop_padding_mask: bool = False
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count.

    ``model``: a causal LM, or a (possibly distributed-wrapped) ``LossHead``. ``batch``: ``input_ids [B, T]``,
    ``shift_labels [B, T]`` (already shifted; -100 = no loss), and either ``attention_mask [B, T]``
    (padded) or ``position_ids [B, T]`` (packed). Divide by the number of labelled tokens of the whole
    accumulation window (not of this micro-batch) for a token-normalised loss.
    """
    inner = getattr(model, "module", model)
    head = model if isinstance(inner, LossHead) else LossHead(model, chunk_size)
    keys = ("input_ids", "shift_labels", "attention_mask", "position_ids")
    loss = head(**{k: batch[k] for k in keys if k in batch}, drop_padding_mask=drop_padding_mask)
    return loss, int((batch["shift_labels"] != IGNORE).sum())
