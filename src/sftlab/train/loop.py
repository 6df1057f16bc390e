"""The training loop: one visible loop on accelerate, read top to bottom.

step:  window = the sequences of this optimizer step (chosen before it is split into micro-batches)
       n = labelled tokens in the whole window
       for each micro-batch: loss_sum / n -> backward        (token-normalised over the window)
       clip -> optimizer step -> lr schedule -> log
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sftlab.config import Config, TrainConfig
from sftlab.train.attention import SEGMENT_ATTENTION, register_segment_attention
from sftlab.train.batches import collate_packed, collate_padded, pack_bfd, plan_windows, split_window
from sftlab.train.checkpoint import (
    find_latest_valid,
    is_valid,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_distributed_checkpoint,
)
from sftlab.train.distributed import full_state_dict, shard_fsdp2, uses_fsdp2
from sftlab.train.faults import Faults
from sftlab.train.loss import LossHead, SourceLoss, forward_loss_sum
from sftlab.train.optim import build_optimizer, build_scheduler
from sftlab.train.zero import build_deepspeed_accelerator, engine_step, is_deepspeed, wants_deepspeed
from sftlab.train.zero import full_state_dict as zero_full_state_dict


@dataclass
class RunResult:
    output_dir: str
    steps: int
    losses: list[float] = field(default_factory=list)  # train loss of every optimizer step
    grad_norms: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    loss_scale_skips: int = 0  # DeepSpeed fp16: updates skipped while the dynamic loss scale came down
    resumed_from: str | None = None
    startup_s: float = 0.0  # from entering train() to the first step (includes loading a checkpoint)
    packing_fill: float = 1.0  # share of packed row capacity used by real tokens
    split_sequences: int = 0  # truncation "split": sequences cut into pieces
    pieces_without_targets: int = 0  # truncation "split": pieces left out (nothing to train in them)
    tokens: int = 0  # real (non-padding) tokens processed
    resumed_tokens: int = 0  # of those, processed before the checkpoint this run resumed from
    trained_tokens: int = 0  # tokens with a loss
    elapsed_s: float = 0.0
    # FSDP2 / DeepSpeed: the trained weights gathered on the main process (plain CPU tensors), for ``final/``
    full_state_dict: dict | None = field(default=None, repr=False)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


@dataclass
class StepPlan:
    """What each optimizer step trains on: ``units`` are sequences, or packed bins of sequences."""

    units: list[list[int]]  # unit -> items (dataset indices, or indices into ``pieces``)
    unit_lengths: list[int]  # tokens per unit
    unit_targets: list[int]  # positions with a loss per unit
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


def count_targets(labels) -> int:
    """Positions with a loss once labels are shifted (the first token is never predicted)."""
    return sum(1 for x in labels[1:] if x != -100)


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
            if count_targets(labels[i][s:e]):
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
        targets = [count_targets(labels[i][s:e]) for i, s, e in pieces]
    units = pack_bfd(lengths, cfg.data.max_seq_len) if cfg.data.packing else [[i] for i in range(len(lengths))]
    return StepPlan(
        units=units,
        unit_lengths=[sum(lengths[i] for i in u) for u in units],
        unit_targets=[sum(targets[i] for i in u) for u in units],
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


def build_accelerator(precision: str, train_cfg: TrainConfig | None = None):
    """An ``Accelerator`` for this run's precision (and DeepSpeed when ``train_cfg`` asks for it, or an
    accelerate config does, in a multi-process run).

    accelerate keeps its state process-wide; a second run in the same process (tests, sweeps, the demo)
    with another precision would be refused, so the mixed-precision part of the state is reset first.
    The process-group part (``PartialState``) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if train_cfg is not None and wants_deepspeed(train_cfg):
        return build_deepspeed_accelerator(train_cfg, mixed)
    # cpu=True on a machine without CUDA: accelerate then sets up multi-process CPU (gloo) under torchrun
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def evaluate_loss(model, dataset, cfg: Config, pad_id: int, accelerator) -> float | None:
    """Token-normalised loss over a whole dataset (no gradient)."""
    if dataset is None or len(dataset) == 0:
        return None
    lengths = list(dataset["length"])
    pieces = [(i, 0, n) for i, n in enumerate(lengths)]
    if cfg.data.truncation == "split":
        pieces = split_pieces(lengths, dataset["labels"], cfg.data.max_seq_len)[0]
    order = sorted(range(len(pieces)), key=lambda i: -(pieces[i][2] - pieces[i][1]))
    bs = cfg.eval.micro_batch_size
    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), bs):
            spans = [pieces[i] for i in order[s : s + bs]]
            rows = dataset[[i for i, _, _ in spans]]
            ex = [
                {"input_ids": a[b0:e], "labels": b[b0:e]}
                for a, b, (_, b0, e) in zip(rows["input_ids"], rows["labels"], spans)
            ]
            batch = {k: v.to(accelerator.device) for k, v in collate_padded(ex, pad_id).items()}
            with accelerator.autocast():
                loss_sum, k = forward_loss_sum(model, batch)
            total += float(loss_sum)
            n += k
    model.train(was_training)
    return total / max(n, 1)


class MetricsWriter:
    """Append-only ``metrics.jsonl``: one JSON object per logged step (flushed, so it is readable live)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


try:  # what writing weights can raise: OS errors, and safetensors' own on a short write (a full disk)
    from safetensors import SafetensorError

    WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, SafetensorError)
except ImportError:  # older safetensors
    WRITE_ERRORS = (OSError,)


class TrainingStopped(Exception):
    """The run stopped early on purpose; ``exit_code`` tells why (3 signal, 4 non-finite, 5 disk)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    """First SIGINT / SIGTERM: finish the step, checkpoint, exit. Second SIGINT: stop at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C interrupts at once
        print(f"\n{self.signal_name}: finishing this step, then saving a checkpoint (Ctrl+C again to quit now)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def evaluate_tasks_now(lm, tokenizer, cfg: Config, accelerator) -> dict[str, float]:
    """In-training task scores (model only, main process) as ``{"eval/<task>/<metric>": value}``."""
    if not accelerator.is_main_process:
        return {}
    from sftlab.eval.scorecard import evaluate_model, flatten_scorecard

    was_training = lm.training
    lm.eval()
    card = evaluate_model(lm, tokenizer, cfg.eval.tasks, batch_size=cfg.eval.batch_size, bootstrap_samples=0,
                          progress=False)
    lm.train(was_training)
    return flatten_scorecard(card)


def all_finite(loss: torch.Tensor, accelerator) -> bool:
    """Whether the loss is finite on every process (they must agree before a collective backward)."""
    ok = torch.isfinite(loss.detach()).float()
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def write_problem(e: Exception, where: Path) -> str:
    """One line on a failed write: the error's first line and the space left where it wrote."""
    import shutil

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
        return f"{first}; {free / 2**20:,.0f} MiB free on that disk"
    except OSError:
        return first


def checked_checkpoint(ckpt: Path) -> Path:
    """A checkpoint named by ``train.resume: PATH``, verified like ``auto`` verifies (manifest + checksums)."""
    if not ckpt.is_dir():
        raise TrainingStopped(f"train.resume: no checkpoint at {ckpt}", 2)
    if not is_valid(ckpt):
        raise TrainingStopped(f"train.resume: {ckpt} fails verification (manifest missing or a file's sha256 "
                              "differs: damaged or half-written). Give another checkpoint, or train.resume=auto "
                              "for the newest valid one", 2)
    return ckpt


def restore_metrics(path: Path, step: int) -> None:
    """Keep only the metrics lines up to ``step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")


def clip_grad_norm(params, max_norm: float, accelerator, fsdp2: bool) -> float:
    """Clip the gradient norm over all processes; returns the norm before clipping.

    Under FSDP2 the gradients are ``DTensor`` shards: torch's ``clip_grad_norm_`` reduces their norm over the
    processes and returns it as a ``DTensor``.
    """
    limit = max_norm or float("inf")
    if not fsdp2:
        return float(accelerator.clip_grad_norm_(params, limit))
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def compile_layers(model) -> int:
    """``torch.compile`` every decoder layer in place (regional compilation: one compiled graph reused by all
    layers, shapes dynamic so varying batch lengths do not recompile; mask building stays eager)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(
            f"train.compile: {type(model).__name__} has no decoder.layers to compile; set train.compile: false"
        )
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def train(
    cfg: Config,
    model,
    tokenizer,
    train_dataset,
    eval_dataset=None,
    output_dir: str | Path | None = None,
    accelerator=None,
) -> RunResult:
    """Train ``model`` on an encoded dataset (columns ``input_ids``, ``labels``, ``length``)."""
    from accelerate.utils import set_seed

    entered = time.perf_counter()
    t = cfg.train
    out = Path(output_dir or cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator is None:
        accelerator = build_accelerator(t.precision, t)
    set_seed(t.seed)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    segment_attention = cfg.data.packing and model.config._attn_implementation == "sdpa" and t.segment_attention
    if segment_attention:
        register_segment_attention()
        model.set_attn_implementation(SEGMENT_ATTENTION)
    if t.compile:
        compile_layers(model)
    model.train()
    lm = model
    fsdp2 = uses_fsdp2(t.distributed, accelerator)
    ds = is_deepspeed(accelerator)  # DeepSpeed ZeRO: the loop drives the engine itself (train/zero.py)
    if fsdp2:  # torch's FSDP2 in place (train/distributed.py); the optimizer then holds the shards
        model = LossHead(lm)  # the root sharded unit: its forward gathers the embeddings, final norm and head
        shard_fsdp2(model, cpu_offload=t.fsdp_cpu_offload)
        optimizer = build_optimizer(model, t)
    else:
        optimizer = build_optimizer(model, t)
        base_optimizer = optimizer  # DeepSpeed steps it inside its own optimizer; the schedule sets its lr
        model, optimizer = accelerator.prepare(LossHead(lm), optimizer)  # model: the LM + loss, maybe wrapped
    engine = model if ds else None
    world, rank = accelerator.num_processes, accelerator.process_index
    labels = train_dataset["labels"]
    targets = [count_targets(x) for x in labels]
    plan = build_step_plan(list(train_dataset["length"]), targets, cfg, world, labels=labels)
    del labels
    per_epoch, total_steps = count_steps(plan, cfg)
    source_loss = SourceLoss.for_dataset(train_dataset, accelerator.device)  # loss/<source> when several
    scheduler = build_scheduler(base_optimizer if ds else optimizer, total_steps, t)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    faults = Faults()
    ckpt_root = out / "checkpoints"

    result = RunResult(
        output_dir=str(out),
        steps=total_steps,
        packing_fill=plan.fill_rate(cfg.data.max_seq_len),
        split_sequences=plan.split_sequences,
        pieces_without_targets=plan.pieces_without_targets,
    )
    start_step = 0
    if t.resume != "none":
        ckpt = find_latest_valid(ckpt_root) if t.resume == "auto" else checked_checkpoint(Path(t.resume))
        if ckpt is not None:
            state = load_checkpoint(
                ckpt, model if fsdp2 or ds else lm, getattr(optimizer, "optimizer", optimizer), scheduler
            )
            start_step = state["step"]
            result.losses, result.grad_norms = state["losses"], state["grad_norms"]
            result.tokens, result.trained_tokens = state["tokens"], state["trained_tokens"]
            result.resumed_tokens = result.tokens
            result.skipped_steps = state.get("skipped_steps", 0)
            result.resumed_from = str(ckpt)
            if accelerator.is_main_process:
                restore_metrics(out / "metrics.jsonl", start_step)
            if t.progress:
                print(f"resumed from {ckpt} at step {start_step}")
    metrics = MetricsWriter(out / "metrics.jsonl") if accelerator.is_main_process else None
    windows = iter_windows(plan, cfg, start_step)
    start = last_log_time = last_save_time = time.perf_counter()
    result.startup_s = start - entered  # plan, optimizer, resume: the wait before the first step
    tokens_since_log = 0

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "losses": result.losses,
            "grad_norms": result.grad_norms,
            "tokens": result.tokens,
            "trained_tokens": result.trained_tokens,
            "skipped_steps": result.skipped_steps,
        }
        try:
            if world > 1:  # every process writes its shards and RNG state (checkpoint.py)
                torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # not accelerate's wrapper
                save_distributed_checkpoint(
                    ckpt_root, step, model if fsdp2 else lm, torch_optimizer, scheduler, state, faults, engine=engine
                )
            else:
                save_checkpoint(ckpt_root, step, lm, optimizer, scheduler, state, faults)
        except WRITE_ERRORS as e:
            raise TrainingStopped(
                f"could not write checkpoint at step {step} ({write_problem(e, ckpt_root)}); the last valid "
                f"checkpoint is kept in {ckpt_root}. Free disk space, then resume with train.resume=auto",
                5,
            ) from None
        if accelerator.is_main_process:
            prune_checkpoints(ckpt_root, t.keep_last)

    with _progress(t.progress and accelerator.is_main_process) as bar, GracefulStop() as stop:
        task = bar.add_task("", total=total_steps, completed=start_step)
        for step in range(start_step, total_steps):
            epoch, micro_batches = next(windows)
            # token normalisation over the whole window, on every process alike (all see the plan)
            n_window = sum(plan.unit_targets[u] for m in micro_batches for u in m)
            n_real = sum(plan.unit_lengths[u] for m in micro_batches for u in m)
            mine = shard_micro_batches(micro_batches, rank, world)
            local_loss, finite = 0.0, True
            for j, (units, weight) in enumerate(mine):
                batch = {k: v.to(accelerator.device) for k, v in make_batch(train_dataset, plan, units, pad_id).items()}
                if source_loss is not None and weight:
                    batch["group_ids"] = source_loss.group_ids(batch, [plan_indices(plan, [u]) for u in units])
                sync = world == 1 or j == len(mine) - 1  # gradients are all-reduced once per step
                with contextlib.ExitStack() as stack:
                    if fsdp2:  # FSDP2's no_sync: keep unsharded gradients until the window's last micro-batch
                        model.set_requires_gradient_sync(sync)
                    elif ds:  # ZeRO: the window's last micro-batch is the accumulation boundary
                        engine.set_gradient_accumulation_boundary(j == len(mine) - 1)
                    elif not sync:
                        stack.enter_context(accelerator.no_sync(model))
                    with accelerator.autocast():
                        loss_sum, _ = forward_loss_sum(
                            model,
                            batch,
                            drop_padding_mask=t.causal_no_pad_mask,
                            group_sums=source_loss.sums if source_loss is not None else None,
                        )
                    loss = faults.loss(step + 1, loss_sum * weight / max(n_window, 1))
                    if ds:  # a non-finite loss makes non-finite gradients: engine.step() skips that update
                        engine.backward(loss * world)  # not accelerator.backward, which would step each time
                        local_loss += float(loss.detach())
                        continue
                    finite = all_finite(loss, accelerator)
                    if not finite:
                        break
                    # DDP / FSDP average gradients over processes; scaling by their number makes it a sum
                    accelerator.backward(loss * world)
                local_loss += float(loss.detach())
            if source_loss is not None:
                source_loss.end_step(accelerator)
            step_loss = (
                float(accelerator.reduce(torch.tensor(local_loss, device=accelerator.device), "sum"))
                if world > 1
                else local_loss
            )
            grad_norm = float("nan")
            if ds:  # clip + step, or skip when the gradients are not finite (the engine checks them)
                finite, grad_norm = engine_step(engine)
                if not finite and t.precision == "fp16" and math.isfinite(step_loss):
                    # fp16's dynamic loss scale overflowed and was lowered: routine, not a data problem
                    result.loss_scale_skips += 1
                    finite = True
            elif finite:
                grad_norm = clip_grad_norm(params, t.max_grad_norm, accelerator, fsdp2)
                finite = math.isfinite(grad_norm)
                if finite:
                    optimizer.step()
            if not finite:  # the update was skipped: count it, and name the data that caused it
                result.skipped_steps += 1
                sources = sorted(
                    {
                        str(x)
                        for x in train_dataset[plan_indices(plan, [u for m in micro_batches for u in m])].get(
                            "source", []
                        )
                    }
                )
                if accelerator.is_main_process:  # all processes agree on the skip; one says so
                    print(
                        f"warning: step {step + 1}: non-finite loss or gradient norm; update skipped "
                        f"({result.skipped_steps}/{t.max_skipped_steps}; sources {sources})"
                    )
                if result.skipped_steps >= t.max_skipped_steps:
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingStopped(
                        f"stopped at step {step + 1}: {result.skipped_steps} steps had a non-finite loss or gradient "
                        f"(last batch from sources {sources}); lower train.lr, check the data, or use precision fp32. "
                        f"Last valid checkpoint: {find_latest_valid(ckpt_root) or 'none'}",
                        4,
                    )
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_since_log += n_real
            result.tokens += n_real
            result.trained_tokens += n_window
            result.losses.append(step_loss if finite else float("nan"))
            result.grad_norms.append(grad_norm)

            is_last = step == total_steps - 1
            eval_loss = None
            if eval_dataset is not None and (is_last or (t.eval_every_steps and (step + 1) % t.eval_every_steps == 0)):
                eval_loss = evaluate_loss(model, eval_dataset, cfg, pad_id, accelerator)
                result.eval_loss = eval_loss
            task_scores = {}
            if (
                cfg.eval.tasks
                and cfg.eval.every_steps
                and (step + 1) % cfg.eval.every_steps == 0
                and not is_last
                and not (fsdp2 or ds)  # a sharded model cannot run on the main process alone
            ):
                task_scores = evaluate_tasks_now(lm, tokenizer, cfg, accelerator)  # the final card comes after
            if metrics and ((step + 1) % t.log_every_steps == 0 or is_last or eval_loss is not None or task_scores):
                now = time.perf_counter()
                record = {
                    "step": step + 1,
                    "epoch": round(epoch + (step % per_epoch + 1) / per_epoch, 4),
                    "loss": result.losses[-1],
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": result.tokens,
                    "trained_tokens": result.trained_tokens,
                    "tokens_per_s": tokens_since_log / max(now - last_log_time, 1e-9),
                    "elapsed_s": now - start,
                }
                if eval_loss is not None:
                    record["eval_loss"] = eval_loss
                if source_loss is not None:
                    record.update(source_loss.flush())
                record.update(task_scores)
                metrics.write(record)
                last_log_time, tokens_since_log = now, 0
            bar.update(
                task,
                advance=1,
                description=f"loss {step_loss:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                f"{result.tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s",
            )
            faults.after_step(step + 1)
            due = (t.save_every_steps and (step + 1) % t.save_every_steps == 0) or (
                t.save_every_minutes and time.perf_counter() - last_save_time >= 60 * t.save_every_minutes
            )
            if (due or stop.signal_name) and not is_last:
                checkpoint(step + 1)
                last_save_time = time.perf_counter()
            if stop.signal_name and not is_last:
                if metrics:
                    metrics.close()
                raise TrainingStopped(
                    f"stopped by {stop.signal_name} after step {step + 1}; checkpoint saved in "
                    f"{ckpt_root}. Resume with: --set train.resume=auto",
                    3,
                )
    result.elapsed_s = time.perf_counter() - start
    if fsdp2 or ds:  # consolidate the shards for final/ (every process takes part; the main one gets the tensors)
        full = zero_full_state_dict(engine) if ds else full_state_dict(model)
        result.full_state_dict = {k.removeprefix("lm."): v for k, v in full.items()}
    if segment_attention:
        lm.set_attn_implementation("sdpa")  # what the saved model should use
    if metrics:
        metrics.close()
    return result
