"""A whole run from a config: load, encode data, train, save ``final/`` and ``summary.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from sftlab.config import Config, ConfigError, to_dict
from sftlab.console import say, show, warn
from sftlab.model.adapters import is_peft_model, merge_lora
from sftlab.train.runtime import WRITE_ERRORS, TrainingStopped, write_problem

log = logging.getLogger(__name__)


def write_data_report(data, out: Path) -> None:
    """``data_report.json``: the reports of ``data.build`` (train with its histograms, eval, stages)."""
    (out / "data_report.json").write_text(json.dumps(data.reports, indent=2), encoding="utf-8")


def save_final(model, tokenizer, path: Path, state_dict: dict | None = None) -> Path:
    """Hugging Face folder (config, safetensors, tokenizer with chat template, generation config), atomically.

    For a peft model the folder holds the adapter (``adapter_config.json`` naming the base model,
    ``adapter_model.safetensors``), loadable with ``peft.PeftModel.from_pretrained``. Written to ``path.tmp`` first and renamed, so a crash never leaves a half-written ``final/``.
    ``state_dict``: the weights to write instead of the model's own (FSDP2: the consolidated full state dict).
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_final(model, tokenizer, tmp, state_dict)
    except WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingStopped(f"could not write {path} ({write_problem(e, path.parent)}). The checkpoints are kept: "
                              "free disk space, then run again with train.resume=auto to write it", 5) from None
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _write_final(model, tokenizer, tmp: Path, state_dict: dict | None) -> None:
    from sftlab.train.faults import Faults

    gen = model.generation_config
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if gen.eos_token_id is not None:
        eos = sorted(set(eos) | set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]))
    gen.eos_token_id = eos[0] if len(eos) == 1 else (eos or None)
    gen.pad_token_id = tokenizer.pad_token_id
    options = {"state_dict": state_dict} if state_dict is not None else {}
    if is_peft_model(model):
        # sftlab never resizes the vocabulary, so the base's embedding matrices are not the adapter's to carry;
        # peft's "auto" would look the base's config.json up on the hub (and warn for a .gguf base) to find out
        options["save_embedding_layers"] = False
    model.save_pretrained(tmp, **options)
    Faults().during_final()
    tokenizer.save_pretrained(tmp)


def run_training(cfg: Config, progress: bool | None = None) -> dict:
    """Train from a config and return the summary (also written to ``OUTPUT/summary.json``).

    The run directory is locked for the whole run and checked first (``outdir.check_output_dir``)."""
    from sftlab.train.outdir import check_output_dir, make_output_dir, output_lock

    out = Path(cfg.output.dir)
    make_output_dir(out)
    with output_lock(out):
        check_output_dir(cfg, out)
        return _run_training(cfg, out, progress)


def load_run_tokenizer(cfg: Config):
    """The run's tokenizer with the chat template training uses. That template is the one saved with the model,
    so inference renders what training saw, data.chat_template_kwargs included (written into it as the
    defaults of its variables)."""
    from sftlab.data.errors import TemplateError
    from sftlab.data.render import resolve_chat_template
    from sftlab.data.templates import bake_template_kwargs
    from sftlab.model.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    try:
        template = resolve_chat_template(cfg.data.template, tokenizer)
        tokenizer.chat_template = bake_template_kwargs(template, cfg.data.chat_template_kwargs)
    except TemplateError:
        if not cfg.data.sources or any(src.format != "text" for src in cfg.data.sources):
            raise
        # plain-text language modelling renders text + eos and needs no chat template
    return tokenizer


def load_run_model(cfg: Config, tokenizer):
    """The base model with LoRA adapters or a trainable selection applied (at most one of them)."""
    from sftlab.model.adapters import apply_lora
    from sftlab.model.load import load_model
    from sftlab.model.select import apply_selection, is_active

    model = load_model(cfg.model, tokenizer, seed=cfg.train.seed, load_in_4bit=cfg.lora.load_in_4bit)
    if cfg.lora.enabled and is_active(cfg.select):
        raise ConfigError("use either lora.enabled or a select preset/pattern, not both")
    if cfg.lora.enabled:
        import torch

        torch.manual_seed(cfg.train.seed)  # LoRA's A matrices start random: train.seed decides them, nothing else
        model = apply_lora(model, cfg.lora)
    elif is_active(cfg.select):
        apply_selection(model, cfg.select)
    return model


def save_run_model(cfg: Config, accelerator, backend, model, tokenizer, out: Path, result) -> str | None:
    """``final/`` (and ``merged/`` for LoRA with merge_on_save) on the main process; the folder, or None."""
    from sftlab.train.artifacts import write_status

    if not (cfg.output.save_final and accelerator.is_main_process):
        return None
    model = accelerator.unwrap_model(model)
    try:
        final_dir = str(save_final(model, tokenizer, out / "final", state_dict=result.full_state_dict))
    except TrainingStopped:  # disk full or not writable: the checkpoints stay, the run says it stopped
        write_status(out, "stopped")
        raise
    if cfg.lora.enabled and cfg.lora.merge_on_save and backend.sharded:
        warn(f"lora.merge_on_save is skipped under {backend.name}; run: sftlab merge --adapter {final_dir}")
    elif cfg.lora.enabled and cfg.lora.merge_on_save:
        save_final(merge_lora(model), tokenizer, out / "merged")
    return final_dir


def build_summary(cfg: Config, result, report, out: Path, summary_card, final_dir, train_records: int,
                  eval_records: int, params: tuple[int, int], t0: float) -> dict:  # fmt: skip
    """``summary.json``: the run in one object."""
    trainable, total = params
    summary = {
        "scorecard": summary_card,
        "output_dir": str(out),
        "final_dir": final_dir,
        "steps": result.steps,
        "train_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "tokens": result.tokens,
        "trained_tokens": result.trained_tokens,
        "train_records": train_records,
        "eval_records": eval_records,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_time_s": round(result.elapsed_s, 2),
        "total_time_s": round(time.perf_counter() - t0, 2),
        "resumed_from": result.resumed_from,  # the checkpoint this run continued, if any
        "tokens_per_s": round((result.tokens - result.resumed_tokens) / max(result.elapsed_s, 1e-9), 1),  # this process's
        "skipped_steps": result.skipped_steps,  # updates skipped for a non-finite loss or gradient
        "loss_scale_skips": result.loss_scale_skips,  # DeepSpeed fp16: while the loss scale came down
        "packing_fill": round(result.packing_fill, 4),
        "split_sequences": result.split_sequences,
        "pieces_without_targets": result.pieces_without_targets,
        "data": report.to_dict() if hasattr(report, "to_dict") else None,
        "config": to_dict(cfg),
    }
    return summary


def _run_training(cfg: Config, out: Path, progress: bool | None) -> dict:
    from sftlab.data import build
    from sftlab.data.pipeline import unique_names
    from sftlab.model.load import count_parameters, quantization_config_4bit
    from sftlab.model.select import format_trainable_table, trainable_table
    from sftlab.report.trackers import check_trackers, follow_metrics
    from sftlab.train.artifacts import Samples, can_generate_on_main, write_report_or_warn, write_status
    from sftlab.train.loop import build_accelerator, train
    from sftlab.train.outdir import start_run
    from sftlab.train.stages import is_staged, plan_stages, run_stages

    progress = cfg.train.progress if progress is None else progress
    t0 = time.perf_counter()
    if cfg.lora.load_in_4bit:  # fail before any data work when QLoRA cannot run here
        if not cfg.lora.enabled:
            raise ConfigError("lora.load_in_4bit is QLoRA: set lora.enabled: true too")
        quantization_config_4bit()
    check_trackers(cfg.train.report_to)  # a missing tracker package fails before any data work
    accelerator = build_accelerator(cfg.train.precision, cfg.train)
    main = accelerator.is_main_process
    from sftlab.train.backends import select_backend

    # sharded: the main process alone cannot run the model after training (FSDP2, DeepSpeed ZeRO)
    backend = select_backend(cfg.train, accelerator)
    sharded = backend.sharded
    if sharded and is_staged(cfg):
        raise ConfigError(f"stages (or dmt) with train.distributed {backend.name} are not supported yet; use ddp")
    if main:
        write_status(out, "running")
    tokenizer = load_run_tokenizer(cfg)

    # stages are planned before any data work: bad stage settings fail first
    stages = plan_stages(cfg, unique_names(cfg.data.sources), out) if is_staged(cfg) else None
    data = build(cfg, tokenizer, out=out, stages=stages, progress=progress and main)  # bars on one process
    if main:
        write_data_report(data, out)
    train_ds, eval_ds, report = data.train, data.eval, data.report
    model = load_run_model(cfg, tokenizer)
    start_run(cfg, out)  # data and model are loaded: now a previous run may be replaced (output.overwrite)
    rows = trainable_table(model)
    (out / "trainable_parameters.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if progress:
        show(format_trainable_table(rows))
    trainable, total = count_parameters(model)
    samples = Samples(cfg, tokenizer, eval_ds, enabled=can_generate_on_main(accelerator) and not sharded)
    samples.before(model, accelerator.device)  # generations on held-out prompts, for the report
    stage_summaries, train_records = None, len(train_ds)
    try:
        with follow_metrics(cfg, out, enabled=main):  # metrics.jsonl -> train.report_to trackers
            if stages is not None:
                result, stage_summaries = run_stages(cfg, model, tokenizer, stages, eval_ds, out, accelerator)
                train_records = sum(len(st.dataset) for st in stages)
            else:
                result = train(cfg, model, tokenizer, train_ds, eval_ds, out, accelerator=accelerator)
    except TrainingStopped:  # stopped on purpose (signal, non-finite steps, disk): report what there is
        if main:
            write_status(out, "stopped")
            if cfg.output.report:
                write_report_or_warn(out)
        raise
    final_dir = save_run_model(cfg, accelerator, backend, model, tokenizer, out, result)
    samples.after(accelerator.unwrap_model(model), out)  # does nothing off the main process
    if cfg.eval.tasks and sharded and main:
        say(f"note: eval.tasks are not scored inside a {backend.name} run; run: sftlab eval --model {final_dir}")
    if cfg.eval.tasks and accelerator.is_main_process and not sharded:
        summary_card = write_run_scorecard(cfg, accelerator.unwrap_model(model), tokenizer, out, progress)
    else:
        summary_card = None
    summary = build_summary(cfg, result, report, out, summary_card, final_dir, train_records,
                            len(eval_ds) if eval_ds is not None else 0, (trainable, total), t0)  # fmt: skip
    if stage_summaries is not None:
        summary["stages"] = stage_summaries
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        write_status(out, "done")
        report_path = write_report_or_warn(out) if cfg.output.report else None
        if report_path and progress:
            show(f"report -> {report_path}")
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        accelerator.state.destroy_process_group()  # shut gloo / nccl down before interpreter exit
    return summary


def write_run_scorecard(cfg: Config, model, tokenizer, out: Path, progress: bool) -> str:
    """Score the trained model (and the base, unless trained from scratch) on ``eval.tasks``."""
    from sftlab.eval.scorecard import evaluate_for_config, format_scorecard, write_scorecard
    from sftlab.model.load import load_model, load_tokenizer

    if hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False):
        model = merge_lora(model)  # the run's last use of the model: score the adapter merged (faster)
    base = base_tok = None
    if cfg.eval.compare_base and cfg.model.from_scratch is None:
        base_tok = load_tokenizer(cfg.model)
        base = load_model(cfg.model, base_tok)
    model.eval()
    card = evaluate_for_config(cfg.eval, model, tokenizer, base_model=base, base_tokenizer=base_tok,
                               progress=progress)
    path = out / "scorecard.json"
    write_scorecard(card, path)
    if progress:
        show(format_scorecard(card, headline_only=True))
    return str(path)
