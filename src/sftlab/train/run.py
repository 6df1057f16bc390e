"""A whole run from a config: load, encode data, train, save ``final/`` and ``summary.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from sftlab.config import Config, ConfigError, save_config, to_dict

log = logging.getLogger(__name__)


def prepare_output_dir(cfg: Config) -> Path:
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()) and not cfg.output.overwrite:
        raise ConfigError(f"output directory {out} is not empty; set output.overwrite: true or pick another output.dir")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.resume == "none":
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    save_config(cfg, out / "config.yaml")
    return out


def load_datasets(cfg: Config, tokenizer, out: Path, progress: bool = True):
    """(train, eval or None, data report dict): encoded datasets ready for the loop."""
    from sftlab.data.pipeline import build_dataset

    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: add at least one source, e.g. data.sources: [{path: train.jsonl}]")
    skipped = cfg.data.skipped_file or str(out / "skipped.jsonl")
    train_ds, report = build_dataset(cfg.data, tokenizer, skipped_path=skipped, progress=progress)
    reports = {"train": report.to_dict()}
    eval_ds = None
    if cfg.eval.file:
        first = cfg.data.sources[0]
        src = type(first)(
            **{
                **{k: getattr(first, k) for k in first.__dataclass_fields__},
                "path": cfg.eval.file,
                "name": "eval",
                "limit": None,
                "weight": None,
                "count": None,
            }
        )
        eval_ds, eval_report = build_dataset(cfg.data, tokenizer, sources=(src,), skipped_path=None, progress=progress)
        reports["eval"] = eval_report.to_dict()
    elif cfg.eval.split_ratio > 0:
        split = train_ds.train_test_split(test_size=cfg.eval.split_ratio, seed=cfg.train.seed)
        train_ds, eval_ds = split["train"], split["test"]
    if eval_ds is not None and len(eval_ds) > cfg.eval.max_records:
        eval_ds = eval_ds.select(range(cfg.eval.max_records))
    (out / "data_report.json").write_text(json.dumps(reports, indent=2), encoding="utf-8")
    return train_ds, eval_ds, report


def save_final(model, tokenizer, path: Path) -> Path:
    """Hugging Face folder (config, safetensors, tokenizer with chat template, generation config), atomically.

    For a peft model the folder holds the adapter (``adapter_config.json`` naming the base model,
    ``adapter_model.safetensors``), loadable with ``peft.PeftModel.from_pretrained``. Written to ``path.tmp`` first and renamed, so a crash never leaves a half-written ``final/``.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen = model.generation_config
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if gen.eos_token_id is not None:
        eos = sorted(set(eos) | set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]))
    gen.eos_token_id = eos[0] if len(eos) == 1 else (eos or None)
    gen.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def run_training(cfg: Config, progress: bool | None = None) -> dict:
    """Train from a config and return the summary (also written to ``OUTPUT/summary.json``)."""
    from rich.console import Console

    from sftlab.data.errors import TemplateError
    from sftlab.data.render import resolve_chat_template
    from sftlab.model.adapters import apply_lora
    from sftlab.model.load import count_parameters, load_model, load_tokenizer, quantization_config_4bit
    from sftlab.model.select import apply_selection, format_trainable_table, is_active, trainable_table
    from sftlab.train.loop import build_accelerator, train

    progress = cfg.train.progress if progress is None else progress
    t0 = time.perf_counter()
    if cfg.lora.load_in_4bit:  # fail before any data work when QLoRA cannot run here
        if not cfg.lora.enabled:
            raise ConfigError("lora.load_in_4bit is QLoRA: set lora.enabled: true too")
        quantization_config_4bit()
    out = prepare_output_dir(cfg)
    accelerator = build_accelerator(cfg.train.precision)
    tokenizer = load_tokenizer(cfg.model)
    # The template used for training is the one saved with the model: inference renders what training saw.
    try:
        tokenizer.chat_template = resolve_chat_template(cfg.data.template, tokenizer)
    except TemplateError:
        if not cfg.data.sources or any(src.format != "text" for src in cfg.data.sources):
            raise
        # plain-text language modelling renders text + eos and needs no chat template

    train_ds, eval_ds, report = load_datasets(cfg, tokenizer, out, progress=progress)
    model = load_model(cfg.model, tokenizer, seed=cfg.train.seed, load_in_4bit=cfg.lora.load_in_4bit)
    if cfg.lora.enabled and is_active(cfg.select):
        raise ConfigError("use either lora.enabled or a select preset/pattern, not both")
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    elif is_active(cfg.select):
        apply_selection(model, cfg.select)
    rows = trainable_table(model)
    (out / "trainable_parameters.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if progress:
        Console().print(format_trainable_table(rows))
    trainable, total = count_parameters(model)
    result = train(cfg, model, tokenizer, train_ds, eval_ds, out, accelerator=accelerator)
    final_dir = None
    if cfg.output.save_final and accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        final_dir = str(save_final(model, tokenizer, out / "final"))
        if cfg.lora.enabled and cfg.lora.merge_on_save:
            save_final(model.merge_and_unload(), tokenizer, out / "merged")
    if cfg.eval.tasks and accelerator.is_main_process:
        summary_card = write_run_scorecard(cfg, accelerator.unwrap_model(model), tokenizer, out, progress)
    else:
        summary_card = None
    summary = {
        "scorecard": summary_card,
        "output_dir": str(out),
        "final_dir": final_dir,
        "steps": result.steps,
        "train_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "tokens": result.tokens,
        "trained_tokens": result.trained_tokens,
        "train_records": len(train_ds),
        "eval_records": len(eval_ds) if eval_ds is not None else 0,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_time_s": round(result.elapsed_s, 2),
        "total_time_s": round(time.perf_counter() - t0, 2),
        "tokens_per_s": round(result.tokens / max(result.elapsed_s, 1e-9), 1),
        "packing_fill": round(result.packing_fill, 4),
        "split_sequences": result.split_sequences,
        "pieces_without_targets": result.pieces_without_targets,
        "data": report.to_dict() if hasattr(report, "to_dict") else None,
        "config": to_dict(cfg),
    }
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        accelerator.state.destroy_process_group()  # shut gloo / nccl down before interpreter exit
    return summary


def write_run_scorecard(cfg: Config, model, tokenizer, out: Path, progress: bool) -> str:
    """Score the trained model (and the base, unless trained from scratch) on ``eval.tasks``."""
    from rich.console import Console

    from sftlab.eval.scorecard import evaluate_for_config, format_scorecard, write_scorecard
    from sftlab.model.load import load_model, load_tokenizer

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
        Console().print(format_scorecard(card, headline_only=True))
    return str(path)
