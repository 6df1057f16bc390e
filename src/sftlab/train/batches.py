"""Batching: which sequences form each optimizer step, and how a micro-batch becomes tensors.

A *window* is the set of sequences of one optimizer step (``micro_batch_size * grad_accum`` sequences,
or packed rows). Windows are chosen before micro-batches, so the data of a step does not depend on how
it is split: batch 8 x accumulation 1 sees exactly the sequences of batch 1 x accumulation 8.

Labels are shifted here, once: ``shift_labels[t]`` is the token to predict at position ``t`` (-100 for
none). Shifting per sequence before packing means the first token of a packed sequence is never a
target of the previous one, exactly as when each sequence runs alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from sftlab.data.types import IGNORE_INDEX


def shift_labels(labels: Sequence[int]) -> list[int]:
    """``[a, b, c] -> [b, c, -100]``: the label each position must predict."""
    return list(labels[1:]) + [IGNORE_INDEX]


def plan_windows(
    lengths: Sequence[int], window_size: int, seed: int, epoch: int, group_by_length: bool = False
) -> list[list[int]]:
    """Split a seeded permutation of ``range(len(lengths))`` into windows of ``window_size`` indices.

    With ``group_by_length``, the permutation is cut into mega-chunks of 50 windows, each sorted by length
    before being cut into windows, and the windows are then shuffled: similar lengths share a step (less
    padding) while the order of steps stays random. The last, partial window is kept (nothing dropped).

    >>> plan_windows([5, 1, 4, 2], window_size=2, seed=0, epoch=0)
    [[2, 0], [1, 3]]
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = window_size * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s : s + mega], key=lambda j: -lengths[j])]
    windows = [order[s : s + window_size] for s in range(0, len(order), window_size)]
    if group_by_length:
        rng.shuffle(windows)
    return windows


def split_window(window: Sequence[int], lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Micro-batches of a window, longest first, so each micro-batch pads to similar lengths.

    >>> split_window([0, 1, 2], [3, 9, 5], micro_batch_size=2)
    [[1, 2], [0]]
    """
    ordered = sorted(window, key=lambda j: (-lengths[j], j))
    return [ordered[s : s + micro_batch_size] for s in range(0, len(ordered), micro_batch_size)]


def collate_padded(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch.

    ``[{input_ids: [5, 6, 7], labels: [-100, 6, 7]}, {input_ids: [8], labels: [8]}]`` ->
    ``input_ids [[5, 6, 7], [8, p, p]]``, ``shift_labels [[6, 7, -100], [-100, -100, -100]]``,
    ``attention_mask [[1, 1, 1], [1, 0, 0]]`` (p = pad_id).
    """
    width = max(len(e["input_ids"]) for e in examples)
    ids, lab, att = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        ids.append(list(e["input_ids"]) + [pad_id] * (width - n))
        lab.append(shift_labels(e["labels"]) + [IGNORE_INDEX] * (width - n))
        att.append([1] * n + [0] * (width - n))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "shift_labels": torch.tensor(lab, dtype=torch.long),
        "attention_mask": torch.tensor(att, dtype=torch.long),
    }


def collate_packed(rows: Sequence[Sequence[dict]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack each group of examples into one row, padding-free inside the row, rows padded to the longest.

    ``[[{input_ids: [5, 6, 7], labels: [-100, 6, 7]}, {input_ids: [8, 9], labels: [8, 9]}], [{input_ids: [4],
    labels: [4]}]]`` -> ``input_ids [[5, 6, 7, 8, 9], [4, p, p, p, p]]``,
    ``shift_labels [[6, 7, -100, 9, -100], [-100, -100, -100, -100, -100]]``,
    ``position_ids [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]`` (p = pad_id). No attention mask: the model derives
    sequence boundaries from the restarting position ids (transformers' packed-sequence detection), so no
    token attends across a boundary; row-end padding restarts at 0 too and is never attended by real tokens.
    Rows (not one flat row) keep attention cost at ``rows x max_len^2`` instead of ``(rows x max_len)^2``.
    """
    ids, lab, pos = [], [], []
    for row in rows:
        r_ids, r_lab, r_pos = [], [], []
        for e in row:
            r_ids.extend(e["input_ids"])
            r_lab.extend(shift_labels(e["labels"]))
            r_pos.extend(range(len(e["input_ids"])))
        ids.append(r_ids)
        lab.append(r_lab)
        pos.append(r_pos)
    width = max(len(r) for r in ids)
    for r_ids, r_lab, r_pos in zip(ids, lab, pos):
        pad = width - len(r_ids)
        r_ids.extend([pad_id] * pad)
        r_lab.extend([IGNORE_INDEX] * pad)
        r_pos.extend(range(pad))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "shift_labels": torch.tensor(lab, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
    }


def pack_bfd(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Global best-fit-decreasing bin packing of sequence indices into bins of capacity ``max_len``.

    Every index appears in exactly one bin; a sequence longer than ``max_len`` gets a bin of its own.
    Deterministic: ties break by index.

    >>> pack_bfd([6, 3, 5, 2, 4], max_len=8)
    [[0, 3], [2, 1], [4]]
    """
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin id)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if max_len - n > 0:
                bisect.insort(free, (max_len - n, len(bins) - 1))
    return bins
