"""Hand-over: merge a LoRA adapter into its base, and export a clean Hugging Face folder with a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from sftlab.config import ConfigError


def read_adapter_base(adapter_dir: Path) -> str:
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        raise ConfigError(f"{adapter_dir} has no adapter_config.json: is it a LoRA adapter folder (RUN/final)?")
    return json.loads(cfg.read_text())["base_model_name_or_path"]


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, max_shard_size: str = "5GB"):
    """Load base + adapter with plain transformers / peft, merge, save a plain model (and tokenizer)."""
    from transformers import AutoTokenizer

    from sftlab.model.adapters import merge_lora
    from sftlab.model.load import load_adapter_model

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = base or read_adapter_base(adapter_dir)
    model = merge_lora(load_adapter_model(adapter_dir, base))
    tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _run_dir_of(model_dir: Path) -> Path | None:
    """The run directory a model folder came from (RUN/final -> RUN), if it has a summary."""
    parent = model_dir.parent
    return parent if (parent / "summary.json").is_file() else None


def model_card(model_dir: Path, run_dir: Path | None) -> str:
    """A README.md model card: base model, data, config and metrics of the run that made the model."""
    lines = ["---", "library_name: transformers", "tags: [sftlab, sft]", "---", "", f"# {model_dir.name}", ""]
    if run_dir is None:
        lines.append("Exported with sftlab (no run directory found, so no training details).")
        return "\n".join(lines) + "\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = summary.get("config", {})
    base = cfg.get("model", {}).get("name_or_path") or "trained from scratch"
    sources = [s.get("path") for s in cfg.get("data", {}).get("sources", [])]
    lines += [
        f"Fine-tuned with sftlab from **{base}** on: {', '.join(sources) or 'n/a'}.",
        "",
        "## Training",
        "",
        f"- steps: {summary.get('steps')}, tokens: {summary.get('tokens'):,}, trained tokens: {summary.get('trained_tokens'):,}",
        f"- final train loss: {summary.get('train_loss')}, eval loss: {summary.get('eval_loss')}",
        f"- trainable parameters: {summary.get('trainable_parameters'):,} of {summary.get('total_parameters'):,}",
        "",
    ]
    card = run_dir / "scorecard.json"
    if card.is_file():
        from sftlab.eval.scorecard import headline_rows

        lines += [
            "## Evaluation (vs the base model)",
            "",
            "| metric | side | base | tuned | change [95% CI] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in headline_rows(json.loads(card.read_text()))]
        lines.append("")
    lines += ["## Config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def export_model(model_dir: str | Path, out_dir: str | Path, max_shard_size: str = "5GB", merge: bool = True):
    """A clean HF folder: weights (LoRA merged when ``merge``), tokenizer with chat template, generation
    config and a model card. ``model_dir`` may be a run directory (its ``final/`` is used)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if (model_dir / "final").is_dir():
        model_dir = model_dir / "final"
    if not model_dir.is_dir():
        raise ConfigError(f"model folder not found: {model_dir}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if (model_dir / "adapter_config.json").is_file() and merge:
        merge_adapter(model_dir, tmp, max_shard_size=max_shard_size)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if (model_dir / "adapter_config.json").is_file():
            shutil.copytree(model_dir, tmp)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True)
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
            AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(out_dir, _run_dir_of(model_dir)), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def export_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16") -> Path:
    """One GGUF file (llama.cpp, Ollama, LM Studio) of a run, a model folder or a LoRA adapter (merged)."""
    from sftlab.model.gguf import write_gguf
    from sftlab.model.load import load_for_inference

    model, tokenizer = load_for_inference(model_dir, merge_adapter=True)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(model.float().cpu(), tokenizer, out_file, quant=quant)
