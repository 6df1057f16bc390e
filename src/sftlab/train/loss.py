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

from sftlab.data.types import IGNORE_INDEX
from sftlab.train.attention import SEGMENT_ATTENTION, segment_index

# Logits elements (labelled tokens x vocab) of one chunk at most: 2**24 = 64 MB in float32, 2,048 rows at vocab
# 8,192 but 333 at 50,257 (half the peak memory of 2,048 rows there, measured: 0.8 vs 1.6 GB at 8 x 512 tokens).
CHUNK_ELEMENTS = 2**24
# Up to this many logits elements for the whole micro-batch, the chunks' logits are kept for backward instead of
# recomputed (a head matmul saved; measured on CPU: ~3% faster steps at 8 x 512 tokens, vocab 8,192).
KEEP_LOGITS_MAX = 2**24


def _chunk_ce_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _chunk_ce_tokens(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [N] (used when per-source sums are wanted)."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


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

    @property
    def config(self):
        """The LM's config (DeepSpeed fills a JSON config's "auto" bucket sizes from its hidden size)."""
        return self.lm.config

    def forward(
        self,
        input_ids,
        shift_labels,
        attention_mask=None,
        position_ids=None,
        drop_padding_mask=False,
        group_ids=None,
        group_sums=None,
    ):
        """Summed cross-entropy over labelled positions. With ``group_ids [B, T]`` (e.g. the source of each
        position) and ``group_sums [G]``, the detached per-group sums are added into ``group_sums`` too."""
        lm = self.lm
        mask = shift_labels != IGNORE_INDEX
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
        by_group = group_ids is not None and group_sums is not None
        if _uses_plain_head(lm):
            logits = lm(**inputs).logits
            ce = F.cross_entropy(logits[mask].float(), shift_labels[mask], reduction="none" if by_group else "sum")
            if by_group:
                group_sums.index_add_(0, group_ids[mask], ce.detach())
                ce = ce.sum()
            return ce
        hidden = lm.get_decoder()(**inputs).last_hidden_state  # [B, T, H]
        head = lm.get_output_embeddings()
        h = hidden[mask]  # [N, H]
        y = shift_labels[mask]  # [N]
        total = hidden.new_zeros((), dtype=torch.float32)
        vocab = getattr(lm.config, "vocab_size", None)
        rows = min(self.chunk_size, max(64, CHUNK_ELEMENTS // vocab)) if vocab else self.chunk_size
        # small logits (all chunks together) are kept for backward: recomputing them costs a head matmul
        recompute = not vocab or h.shape[0] * vocab > KEEP_LOGITS_MAX
        g = group_ids[mask] if by_group else None  # [N]
        chunk_fn = _chunk_ce_tokens if by_group else _chunk_ce_sum
        for s in range(0, h.shape[0], rows):
            hs, ys = h[s : s + rows], y[s : s + rows]
            if recompute and torch.is_grad_enabled() and hs.requires_grad:
                ce = checkpoint(chunk_fn, head, hs, ys, use_reentrant=False)
            else:
                ce = chunk_fn(head, hs, ys)
            if by_group:
                group_sums.index_add_(0, g[s : s + rows], ce.detach())
                ce = ce.sum()
            total = total + ce
        return total


def forward_loss_sum(
    model,
    batch: dict[str, torch.Tensor],
    chunk_size: int = 2048,
    drop_padding_mask: bool = False,
    group_sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count.

    ``model``: a causal LM, or a (possibly distributed-wrapped) ``LossHead``. ``batch``: ``input_ids [B, T]``,
    ``shift_labels [B, T]`` (already shifted; -100 = no loss), and either ``attention_mask [B, T]``
    (padded) or ``position_ids [B, T]`` (packed). Divide by the number of labelled tokens of the whole
    accumulation window (not of this micro-batch) for a token-normalised loss. With ``batch["group_ids"]``
    ([B, T] ints) and ``group_sums`` ([G] float32), the loss sum of each group is added into ``group_sums``.
    """
    inner = getattr(model, "module", model)
    head = model if isinstance(inner, LossHead) else LossHead(model, chunk_size)
    keys = ("input_ids", "shift_labels", "attention_mask", "position_ids", "group_ids")
    extra = {"group_sums": group_sums} if group_sums is not None and "group_ids" in batch else {}
    loss = head(**{k: batch[k] for k in keys if k in batch}, drop_padding_mask=drop_padding_mask, **extra)
    return loss, int((batch["shift_labels"] != IGNORE_INDEX).sum())


class SourceLoss:
    """Per-source training loss for ``metrics.jsonl``: ``loss/<source>`` = summed cross-entropy of that
    source's labelled tokens / their number, over the steps since the previous log line (a source with no
    token in that span is left out of the line). Summed over processes every step."""

    def __init__(self, names: list[str], row_group: list[int], device):
        self.names = names
        self.row_group = row_group  # dataset row -> index into names
        self.sums = torch.zeros(len(names), dtype=torch.float32, device=device)  # this step, this process
        self.counts = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.span_sums = torch.zeros(len(names), dtype=torch.float64, device=device)  # since the last log
        self.span_counts = torch.zeros(len(names), dtype=torch.float64, device=device)

    @classmethod
    def for_dataset(cls, dataset, device) -> SourceLoss | None:
        """An accumulator when the dataset's ``source`` column holds more than one source, else None."""
        if "source" not in dataset.column_names:
            return None
        sources = [str(x) for x in dataset["source"]]
        names = sorted(set(sources))
        if len(names) < 2:
            return None
        index = {n: i for i, n in enumerate(names)}
        return cls(names, [index[x] for x in sources], device)

    def group_ids(self, batch: dict[str, torch.Tensor], rows_per_sequence: list[list[int]]) -> torch.Tensor:
        """[B, T] source index of every position; ``rows_per_sequence[b]``: the dataset rows packed into row b,
        in order (one each when not packed; packed sequences restart ``position_ids`` at 0). Also counts the
        labelled tokens of each source."""
        ids = batch["input_ids"]
        width = max(len(r) for r in rows_per_sequence)
        table = torch.tensor(
            [[self.row_group[i] for i in r] + [self.row_group[r[-1]]] * (width - len(r)) for r in rows_per_sequence],
            dtype=torch.long,
        )
        if "position_ids" in batch and width > 1:
            segment = (batch["position_ids"].cpu() == 0).long().cumsum(1) - 1  # row-end padding: extra segments
            out = table.gather(1, segment.clamp(0, width - 1))
        else:
            out = table[:, :1].expand(ids.shape[0], ids.shape[1])
        out = out.to(ids.device)
        labelled = batch["shift_labels"] != IGNORE_INDEX
        self.counts += torch.bincount(out[labelled], minlength=len(self.names)).to(self.counts)
        return out

    def end_step(self, accelerator) -> None:
        """Add this step's sums (of every process) to the current span."""
        sums, counts = self.sums.double(), self.counts
        if accelerator.num_processes > 1:
            both = accelerator.reduce(torch.cat([sums, counts]), "sum")
            sums, counts = both[: len(self.names)], both[len(self.names) :]
        self.span_sums += sums
        self.span_counts += counts
        self.sums.zero_()
        self.counts.zero_()

    def flush(self) -> dict[str, float]:
        """``{"loss/<source>": mean}`` over the span, and start a new span."""
        out = {
            f"loss/{n}": float(self.span_sums[i] / self.span_counts[i])
            for i, n in enumerate(self.names)
            if self.span_counts[i] > 0
        }
        self.span_sums.zero_()
        self.span_counts.zero_()
        return out
