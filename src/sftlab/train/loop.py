"""The training loop: one visible loop, read top to bottom; the backend (train/backends/) hides DDP, FSDP2 and
DeepSpeed, the plan (train/plan.py) says what each step trains on.

step:  window = the sequences of this optimizer step (chosen before it is split into micro-batches)
       n = labelled tokens in the whole window
       for each micro-batch: loss_sum / n -> backward        (token-normalised over the window)
       clip -> optimizer step -> lr schedule -> log
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sftlab.config import Config, TrainConfig
from sftlab.console import say, warn
from sftlab.data.types import count_trained
from sftlab.model.load import pad_id_of
from sftlab.train.allocator import keep_freed_memory
from sftlab.train.attention import SEGMENT_ATTENTION, SFTLAB_ATTENTION, back_to_sdpa, register_segment_attention
from sftlab.train.backends import Backend, select_backend
from sftlab.train.batches import collate_padded
from sftlab.train.checkpoint import find_latest_valid, prune_checkpoints
from sftlab.train.faults import Faults
from sftlab.train.frozen import frozen_linears_cast
from sftlab.train.loss import SourceLoss, forward_loss_sum
from sftlab.train.optim import build_scheduler
from sftlab.train.plan import (
    StepPlan,
    build_step_plan,
    count_steps,
    iter_windows,
    make_batch,
    plan_indices,
    shard_micro_batches,
    split_pieces,
)
from sftlab.train.runtime import (
    WRITE_ERRORS,
    GracefulStop,
    MetricsWriter,
    TrainingStopped,
    checked_checkpoint,
    progress_bar,
    restore_metrics,
    write_problem,
)
from sftlab.train.zero import build_deepspeed_accelerator, wants_deepspeed


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


def prepare_model(lm, cfg: Config, device: torch.device) -> bool:
    """Gradient checkpointing, sftlab's attention (segments for packed rows, short rows on CPU: train/attention.py)
    for an sdpa model, regional compilation, train mode. Returns whether the attention was switched (the saved
    model goes back to sdpa)."""
    t = cfg.train
    if cfg.model.gradient_checkpointing:
        enable = getattr(lm, "activation_checkpointing_enable", None)  # a later 5.x name; earlier ones: the fallback
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    segments = cfg.data.packing and t.segment_attention
    switch = lm.config._attn_implementation == "sdpa" and (segments or torch.device(device).type == "cpu")
    if switch:
        register_segment_attention()
        lm.set_attn_implementation(SEGMENT_ATTENTION if segments else SFTLAB_ATTENTION)
    if t.compile:
        compile_layers(lm)
    lm.train()
    return switch


def plan_dataset(train_dataset, cfg: Config, world: int) -> StepPlan:
    labels = train_dataset["labels"]
    return build_step_plan(list(train_dataset["length"]), [count_trained(x) for x in labels], cfg, world,
                           labels=labels)  # fmt: skip


def resume(backend: Backend, scheduler, result: RunResult, t: TrainConfig, ckpt_root: Path, out: Path) -> int:
    """Restore the checkpoint ``train.resume`` names (auto: the newest valid one); returns its step (0: none)."""
    if t.resume == "none":
        return 0
    ckpt = find_latest_valid(ckpt_root) if t.resume == "auto" else checked_checkpoint(Path(t.resume))
    if ckpt is None:
        return 0
    state = backend.load(ckpt, scheduler)
    result.losses, result.grad_norms = state["losses"], state["grad_norms"]
    result.tokens, result.trained_tokens = state["tokens"], state["trained_tokens"]
    result.resumed_tokens = result.tokens
    result.skipped_steps = state.get("skipped_steps", 0)
    result.resumed_from = str(ckpt)
    if backend.accelerator.is_main_process:
        restore_metrics(out / "metrics.jsonl", state["step"])
    if t.progress:
        say(f"resumed from {ckpt} at step {state['step']}")
    return state["step"]


def save_now(backend: Backend, ckpt_root: Path, step: int, scheduler, result: RunResult, faults, keep_last: int) -> None:
    """Checkpoint ``step`` (every process takes part); a failed write stops the run, keeping the last valid one."""
    state = {"step": step, "losses": result.losses, "grad_norms": result.grad_norms, "tokens": result.tokens,
             "trained_tokens": result.trained_tokens, "skipped_steps": result.skipped_steps}  # fmt: skip
    try:
        backend.save(ckpt_root, step, scheduler, state, faults)
    except WRITE_ERRORS as e:
        raise TrainingStopped(
            f"could not write checkpoint at step {step} ({write_problem(e, ckpt_root)}); the last valid "
            f"checkpoint is kept in {ckpt_root}. Free disk space, then resume with train.resume=auto",
            5,
        ) from None
    if backend.accelerator.is_main_process:
        prune_checkpoints(ckpt_root, keep_last)


def step_losses(backend: Backend, cfg: Config, plan: StepPlan, dataset, micro_batches, n_trained: int, step: int,
                source_loss, faults, pad_id: int) -> tuple[float, bool]:  # fmt: skip
    """Forward and backward of this process's micro-batches of one window: ``(summed loss, all finite)``."""
    accelerator = backend.accelerator
    mine = shard_micro_batches(micro_batches, accelerator.process_index, accelerator.num_processes)
    local_loss = 0.0
    for j, (units, weight) in enumerate(mine):
        batch = {k: v.to(accelerator.device) for k, v in make_batch(dataset, plan, units, pad_id).items()}
        if source_loss is not None and weight:
            batch["group_ids"] = source_loss.group_ids(batch, [plan_indices(plan, [u]) for u in units])
        with backend.sync(is_last=j == len(mine) - 1):  # gradients are all-reduced once per step
            with accelerator.autocast():
                loss_sum, _ = forward_loss_sum(backend.model, batch, drop_padding_mask=cfg.train.causal_no_pad_mask,
                                               group_sums=source_loss.sums if source_loss is not None else None)
            loss = faults.loss(step + 1, loss_sum * weight / max(n_trained, 1))
            if not backend.backward(loss):
                return local_loss, False
        local_loss += float(loss.detach())
    return local_loss, True


def count_skip(backend: Backend, result: RunResult, t: TrainConfig, dataset, plan: StepPlan, micro_batches,
               step: int, ckpt_root: Path) -> None:  # fmt: skip
    """A skipped update: count it, name the data that caused it, stop after ``train.max_skipped_steps``."""
    result.skipped_steps += 1
    rows = dataset[plan_indices(plan, [u for m in micro_batches for u in m])]
    sources = sorted({str(x) for x in rows.get("source", [])})
    warn(f"step {step + 1}: non-finite loss or gradient norm; update skipped "  # every process skips, one says so
         f"({result.skipped_steps}/{t.max_skipped_steps}; sources {sources})")  # fmt: skip
    if result.skipped_steps >= t.max_skipped_steps:
        backend.zero_grad()
        raise TrainingStopped(
            f"stopped at step {step + 1}: {result.skipped_steps} steps had a non-finite loss or gradient "
            f"(last batch from sources {sources}); lower train.lr, check the data, or use precision fp32. "
            f"Last valid checkpoint: {find_latest_valid(ckpt_root) or 'none'}",
            4,
        )


def step_evals(backend: Backend, lm, tokenizer, cfg: Config, eval_dataset, step: int, is_last: bool,
               pad_id: int) -> tuple[float | None, dict[str, float]]:  # fmt: skip
    """The evaluations due after ``step``: ``(eval loss or None, in-training task scores)``. The eval loss runs
    every ``train.eval_every_steps`` and after the last step; task scores every ``eval.every_steps`` (the final
    scorecard comes after training, so not on the last step; not under sharded backends)."""
    t, accelerator = cfg.train, backend.accelerator
    eval_loss = None
    if eval_dataset is not None and (is_last or (t.eval_every_steps and (step + 1) % t.eval_every_steps == 0)):
        eval_loss = evaluate_loss(backend.model, eval_dataset, cfg, pad_id, accelerator)
    every = cfg.eval.every_steps
    if cfg.eval.tasks and every and (step + 1) % every == 0 and not is_last and not backend.sharded:
        return eval_loss, evaluate_tasks_now(lm, tokenizer, cfg, accelerator)
    return eval_loss, {}


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
    lm = model
    switched = prepare_model(lm, cfg, accelerator.device)
    backend = select_backend(t, accelerator)
    backend.prepare(lm)
    plan = plan_dataset(train_dataset, cfg, accelerator.num_processes)
    per_epoch, total_steps = count_steps(plan, cfg)
    source_loss = SourceLoss.for_dataset(train_dataset, accelerator.device)  # loss/<source> when several
    scheduler = build_scheduler(backend.schedule_optimizer, total_steps, t)
    pad_id, faults = pad_id_of(tokenizer), Faults()
    ckpt_root = out / "checkpoints"
    result = RunResult(output_dir=str(out), steps=total_steps, packing_fill=plan.fill_rate(cfg.data.max_seq_len),
                       split_sequences=plan.split_sequences, pieces_without_targets=plan.pieces_without_targets)
    start_step = resume(backend, scheduler, result, t, ckpt_root, out)
    metrics = MetricsWriter(out / "metrics.jsonl") if accelerator.is_main_process else None
    windows = iter_windows(plan, cfg, start_step)
    start = last_log_time = last_save_time = time.perf_counter()
    result.startup_s = start - entered  # plan, optimizer, resume: the wait before the first step
    tokens_since_log = 0

    fast_frozen = t.precision != "fp32" and not backend.sharded and not t.compile  # train/frozen.py
    with (progress_bar(t.progress) as bar, GracefulStop() as stop, frozen_linears_cast(lm, fast_frozen),
          keep_freed_memory(accelerator.device), back_to_sdpa(lm, switched)):  # train/allocator.py, attention.py
        task = bar.add_task("", total=total_steps, completed=start_step)
        for step in range(start_step, total_steps):
            epoch, micro_batches = next(windows)
            # token normalisation over the whole window, on every process alike (all see the plan)
            n_trained = sum(plan.unit_trained[u] for m in micro_batches for u in m)
            n_real = sum(plan.unit_lengths[u] for m in micro_batches for u in m)
            local_loss, finite = step_losses(backend, cfg, plan, train_dataset, micro_batches, n_trained, step,
                                             source_loss, faults, pad_id)  # fmt: skip
            if source_loss is not None:
                source_loss.end_step(accelerator)
            step_loss = backend.sum_over_processes(local_loss)
            applied, grad_norm = backend.step(finite, step_loss)
            if not applied:  # the update was skipped: count it, and name the data that caused it
                count_skip(backend, result, t, train_dataset, plan, micro_batches, step, ckpt_root)
            scheduler.step()
            backend.zero_grad()
            tokens_since_log += n_real
            result.tokens += n_real
            result.trained_tokens += n_trained
            result.losses.append(step_loss if applied else float("nan"))
            result.grad_norms.append(grad_norm)

            is_last = step == total_steps - 1
            eval_loss, task_scores = step_evals(backend, lm, tokenizer, cfg, eval_dataset, step, is_last, pad_id)
            if eval_loss is not None:
                result.eval_loss = eval_loss
            if metrics and ((step + 1) % t.log_every_steps == 0 or is_last or eval_loss is not None or task_scores):
                now = time.perf_counter()
                record = {"step": step + 1, "epoch": round(epoch + (step % per_epoch + 1) / per_epoch, 4),
                          "loss": result.losses[-1], "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "tokens": result.tokens, "trained_tokens": result.trained_tokens,
                          "tokens_per_s": tokens_since_log / max(now - last_log_time, 1e-9), "elapsed_s": now - start,
                          **({"eval_loss": eval_loss} if eval_loss is not None else {}),
                          **(source_loss.flush() if source_loss is not None else {}), **task_scores}  # fmt: skip
                metrics.write(record)
                last_log_time, tokens_since_log = now, 0
            bar.update(task, advance=1, description=f"loss {step_loss:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                       f"{result.tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")  # fmt: skip
            faults.after_step(step + 1)
            due = (t.save_every_steps and (step + 1) % t.save_every_steps == 0) or (
                t.save_every_minutes and time.perf_counter() - last_save_time >= 60 * t.save_every_minutes
            )
            if (due or stop.signal_name) and not is_last:
                save_now(backend, ckpt_root, step + 1, scheduler, result, faults, t.keep_last)
                last_save_time = time.perf_counter()
            if stop.signal_name and not is_last:
                if metrics:
                    metrics.close()
                raise TrainingStopped(f"stopped by {stop.signal_name} after step {step + 1}; checkpoint saved in "
                                      f"{ckpt_root}. Resume with: --set train.resume=auto", 3)  # fmt: skip
    result.elapsed_s = time.perf_counter() - start
    result.loss_scale_skips = backend.loss_scale_skips
    if backend.sharded:  # consolidate the shards for final/ (every process takes part; the main one gets them)
        result.full_state_dict = backend.full_state_dict()
    if metrics:
        metrics.close()
    return result
