"""``sftlab eval --model DIR [--base DIR] --config CONFIG [--out PATH] [--set k=v ...]``."""

from __future__ import annotations

import argparse

from sftlab.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sftlab eval`` options to ``parser``."""
    parser.add_argument(
        "--model", required=True, help="model folder (safetensors + tokenizer), e.g. RUN/final"
    )
    parser.add_argument("--base", help="base model folder to compare with (paired statistics per metric)")
    parser.add_argument("--config", required=True, help="YAML config whose eval.tasks are scored")
    parser.add_argument(
        "--out", default="scorecard.json", help="where scorecard.json goes (default: ./scorecard.json)"
    )
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. eval.batch_size=8"
    )


def load_model_and_tokenizer(path: str, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A saved causal LM (a LoRA adapter merged on its base) and its tokenizer, in eval mode (``model.load``)."""
    from sftlab.model.load import load_for_inference

    return load_for_inference(path, dtype=dtype, attn_implementation=attn_implementation, merge_adapter=True)


def run(args: argparse.Namespace) -> int:
    """Score the model (and the base) on the config's ``eval.tasks``, write the scorecard, print the table."""
    from sftlab.config import load_config
    from sftlab.console import show
    from sftlab.eval.scorecard import evaluate_for_config, format_scorecard, write_scorecard

    cfg = load_config(args.config, args.set or [])
    if not cfg.eval.tasks:
        raise ConfigError(
            f"{args.config}: eval.tasks is empty; add tasks (see examples/sst2.yaml) to score a model"
        )
    model, tokenizer = load_model_and_tokenizer(args.model, cfg.model.dtype, cfg.model.attn_implementation)
    base = base_tok = None
    if args.base:
        base, base_tok = load_model_and_tokenizer(args.base, cfg.model.dtype, cfg.model.attn_implementation)
    card = evaluate_for_config(cfg.eval, model, tokenizer, base_model=base, base_tokenizer=base_tok)
    card["model"], card["base"] = args.model, args.base
    path = write_scorecard(card, args.out)
    show(format_scorecard(card))
    show(f"scorecard -> {path}")
    return 0
