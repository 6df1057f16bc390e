"""Step planning: which sequences (or packed bins of them) each optimizer step trains on, and its batches.

A run's plan is a pure function of the dataset's lengths and labels and the config: the loop, a resumed run
and every process of a distributed run compute the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sftlab.config import Config
from sftlab.data.types import count_trained
from sftlab.train.batches import collate_packed, collate_padded, pack_bfd, plan_windows, split_window


@dataclass
class StepPlan:
    """What each optimizer step trains on: ``units`` are sequences, or packed bins of sequences."""

    units: list[list[int]]  # unit -> items (dataset indices, or indices into ``pieces``)
    unit_lengths: list[int]  # tokens per unit
    unit_trained: list[int]  # positions with a loss per unit
    window: int  # units per optimizer step
    micro: int  # units per micro-batch
    packed: bool
    # truncation "split": item -> (dataset index, start, end) of a piece of <= max_seq_len tokens; None: an item
    # is a whole dataset row
    pieces: list[tuple[int, int, int]] | None = None
    split_sequences: int = 0  # sequences longer than max_seq_len cut into pieces
    pieces_without_targets: int = 0  # pieces left out because none of their positions has a loss

    def fill_rate(self, max_len: int) -> float:
        """Share of packed row capacity holding real tokens (1.0 when not packed)."""
        return sum(self.unit_lengths) / (max_len * len(self.units)) if self.packed else 1.0


def split_pieces(lengths: list[int], labels: list, max_len: int) -> tuple[list[tuple[int, int, int]], int, int]:
    """Cut sequences longer than ``max_len`` into consecutive pieces of at most ``max_len`` tokens.

    Returns ``(pieces, split_sequences, pieces_without_targets)``; a piece is ``(index, start, end)``. Each
    piece trains as a sequence of its own (positions restart, it does not attend to the piece before it); a
    piece with no position left to train (e.g. a long prompt's head) is left out and counted.

    >>> split_pieces([2, 5], [[1, 2], [-100, -100, -100, 4, 5]], max_len=2)
    ([(0, 0, 2), (1, 2, 4)], 1, 2)
    """
    pieces, split, empty = [], 0, 0
    for i, n in enumerate(lengths):
        if n <= max_len:
            pieces.append((i, 0, n))
            continue
        split += 1
        for s in range(0, n, max_len):
            e = min(s + max_len, n)
            if count_trained(labels[i][s:e]):
                pieces.append((i, s, e))
            else:
                empty += 1
    return pieces, split, empty


def build_step_plan(
    lengths: list[int], targets: list[int], cfg: Config, world: int = 1, labels: list | None = None
) -> StepPlan:
    """Units (sequences or packed bins) and the window size: ``micro x accum x processes`` units per step.

    With ``data.truncation: split`` (``labels`` needed), over-long sequences are first cut into pieces.
    """
    t = cfg.train
    pieces, split, empty = None, 0, 0
    if cfg.data.truncation == "split" and any(n > cfg.data.max_seq_len for n in lengths):
        pieces, split, empty = split_pieces(lengths, labels, cfg.data.max_seq_len)
        lengths = [e - s for _, s, e in pieces]
        targets = [count_trained(labels[i][s:e]) for i, s, e in pieces]
    units = pack_bfd(lengths, cfg.data.max_seq_len) if cfg.data.packing else [[i] for i in range(len(lengths))]
    return StepPlan(
        units=units,
        unit_lengths=[sum(lengths[i] for i in u) for u in units],
        unit_trained=[sum(targets[i] for i in u) for u in units],
        window=t.micro_batch_size * t.grad_accum * world,
        micro=t.micro_batch_size,
        packed=cfg.data.packing,
        pieces=pieces,
        split_sequences=split,
        pieces_without_targets=empty,
    )


def plan_indices(plan: StepPlan, units) -> list[int]:
    """Dataset rows the given units read."""
    items = [i for u in units for i in plan.units[u]]
    return items if plan.pieces is None else [plan.pieces[i][0] for i in items]


def shard_micro_batches(micro_batches: list[list[int]], rank: int, world: int) -> list[tuple[list[int], float]]:
    """This process's micro-batches of a window, as (units, loss weight).

    Every process gets the same number of micro-batches (DDP / FSDP need the same number of backward
    passes); a process short of data repeats the first micro-batch with weight 0.

    >>> shard_micro_batches([[0], [1], [2]], rank=1, world=2)
    [([1], 1.0), ([0], 0.0)]
    """
    slots = math.ceil(len(micro_batches) / world)
    mine = [(m, 1.0) for m in micro_batches[rank::world]]
    return mine + [(micro_batches[0], 0.0)] * (slots - len(mine))


def count_steps(plan: StepPlan, cfg: Config) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps)."""
    per_epoch = max(1, math.ceil(len(plan.units) / plan.window))
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(1, math.ceil(cfg.train.epochs * per_epoch))
    return per_epoch, total


def iter_windows(plan: StepPlan, cfg: Config, start_step: int = 0):
    """Yield (epoch, [micro-batch unit lists]) forever, one item per optimizer step, from ``start_step``.

    Each epoch's windows are a pure function of (seed, epoch), so a resumed run jumps straight to its
    window: nothing is replayed.
    """
    per_epoch = max(1, math.ceil(len(plan.units) / plan.window))
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        if cfg.data.shuffle:
            windows = plan_windows(
                plan.unit_lengths,
                plan.window,
                cfg.train.seed,
                epoch,
                group_by_length=cfg.data.group_by_length and not plan.packed,
            )
        else:
            order = list(range(len(plan.units)))
            windows = [order[s : s + plan.window] for s in range(0, len(order), plan.window)]
        for w in windows[skip:]:
            yield epoch, split_window(w, plan.unit_lengths, plan.micro)
        skip = 0
        epoch += 1


def make_batch(dataset, plan: StepPlan, micro_units: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    rows = dataset[plan_indices(plan, micro_units)]
    examples = ({"input_ids": a, "labels": b} for a, b in zip(rows["input_ids"], rows["labels"]))
    if plan.pieces is not None:
        spans = [plan.pieces[i][1:] for u in micro_units for i in plan.units[u]]
        examples = ({k: v[s:e] for k, v in x.items()} for x, (s, e) in zip(examples, spans))
    examples = iter(examples)
    if plan.packed:
        return collate_packed([[next(examples) for _ in plan.units[u]] for u in micro_units], pad_id)
    return collate_padded(list(examples), pad_id)
