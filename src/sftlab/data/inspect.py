"""``sftlab data inspect PATH``: see records as the model will, trained spans highlighted, plus token stats.

Human output: the first ``--show`` examples with trained tokens in colour (terminal: green, reasoning
traces magenta, tool calls and results cyan; bold when trained) or in ``[[...]]`` (otherwise), then the data
summary. ``--json``: one JSON object per kept record on stdout
(``input_ids``, ``labels`` with -100 where no loss, ``text`` = the decoded ``input_ids``, ``source``,
``origin``, ``length``, ``num_trained``) and nothing else; the summary goes to stderr. This interface is
stable: other tools check masks through it.
"""

from __future__ import annotations

import argparse
import json
import sys

from sftlab.config import DataConfig, SourceConfig
from sftlab.console import console, say
from sftlab.data.errors import DataError
from sftlab.data.formats import FORMATS
from sftlab.data.masks import MASK_POLICIES
from sftlab.data.reasoning import REASONING_MASKS, REASONING_MODES
from sftlab.data.render import IGNORE_INDEX, TRUNCATIONS
from sftlab.data.tools import TOOL_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data file, folder, saved dataset, or hub dataset id")
    parser.add_argument(
        "--format", default="auto", choices=("auto",) + FORMATS, help="record format (default: detect)"
    )
    parser.add_argument("--tokenizer", help="tokenizer or model folder (required)")
    parser.add_argument(
        "--template", help="chatml | llama-3 | mistral | plain | FILE.jinja (default: the tokenizer's)"
    )
    parser.add_argument("--mask", default="auto", choices=MASK_POLICIES, help="loss mask policy")
    parser.add_argument(
        "--chat-template-kwargs",
        metavar="JSON",
        help='template variables for every render, e.g. \'{"enable_thinking": false}\'',
    )
    parser.add_argument(
        "--reasoning", default="template", choices=REASONING_MODES, help="reasoning traces (data.reasoning)"
    )
    parser.add_argument(
        "--reasoning-mask", default="all", choices=REASONING_MASKS, help="which traces are trained"
    )
    parser.add_argument(
        "--tool-format", default="native", choices=TOOL_FORMATS, help="tool calls: native or json_in_content"
    )
    parser.add_argument("--limit", type=int, help="use only the first N records")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per record on stdout, summary on stderr"
    )
    parser.add_argument("--max-seq-len", type=int, default=DataConfig.max_seq_len, help="tokens per sequence")
    parser.add_argument("--truncation", default="truncate_right", choices=TRUNCATIONS)
    parser.add_argument(
        "--on-error",
        default="skip",
        choices=("skip", "raise"),
        help="bad records: skip and count (default here), or stop at the first",
    )
    parser.add_argument("--show", type=int, default=3, help="examples printed in human output (default 3)")
    parser.add_argument(
        "--prompt-template", help='classification / extraction, e.g. "Review: {sentence}\\nSentiment:"'
    )
    parser.add_argument("--completion-template", help='e.g. " {label}" (default)')
    parser.add_argument(
        "--label-map", help='raw label -> text: \'{"0": "negative"}\' or 0=negative,1=positive'
    )
    parser.add_argument("--columns", help="canonical field -> column: prompt=question,completion=answer")
    parser.add_argument("--system", help="system prompt added to every conversation")
    parser.add_argument("--split", default="train", help="split of a saved / hub dataset")
    parser.add_argument("--subset", help="hub dataset config name")
    parser.add_argument(
        "--no-color", action="store_true", help="brackets instead of colour even in a terminal"
    )


def parse_mapping(text: str | None, what: str) -> dict[str, str]:
    """``'{"0": "neg"}'`` or ``"0=neg,1=pos"`` -> ``{"0": "neg", "1": "pos"}``."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        try:
            return {str(k): str(v) for k, v in json.loads(text).items()}
        except (json.JSONDecodeError, AttributeError) as e:
            raise DataError(
                f"{what} is not a JSON object: {e}", field=what, fix='write {"key": "value"}'
            ) from None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise DataError(
            f"{what} {text!r} is not KEY=VALUE,...", field=what, fix="write 0=negative,1=positive"
        )
    return {k.strip(): v for k, v in pairs}


def parse_kwargs(text: str | None) -> dict:
    """``--chat-template-kwargs '{"enable_thinking": false}'`` -> a dict (JSON only, nothing evaluated)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        value = e
    if not isinstance(value, dict):
        raise DataError(
            f"--chat-template-kwargs {text!r} is not a JSON object",
            field="--chat-template-kwargs",
            fix='write e.g. \'{"enable_thinking": false}\'',
        )
    return value


def build_config(args) -> DataConfig:
    source = SourceConfig(
        path=args.path,
        format=args.format,
        split=args.split,
        subset=args.subset,
        limit=args.limit,
        columns=parse_mapping(args.columns, "--columns"),
        prompt_template=args.prompt_template,
        completion_template=args.completion_template,
        label_map=parse_mapping(args.label_map, "--label-map"),
        system=args.system,
    )
    return DataConfig(
        sources=(source,),
        template=args.template,
        chat_template_kwargs=parse_kwargs(getattr(args, "chat_template_kwargs", None)),
        reasoning=getattr(args, "reasoning", "template"),
        reasoning_mask=getattr(args, "reasoning_mask", "all"),
        tool_format=getattr(args, "tool_format", "native"),
        mask=args.mask,
        max_seq_len=args.max_seq_len,
        truncation=args.truncation,
        on_error=args.on_error,
        cache_dir=None,
        num_proc=1,
    )


def segments(tokenizer, ids: list[int], labels: list[int], kinds: list[str] | None = None) -> list[tuple]:
    """(trained, text) runs of a record; text by decoding prefixes, so spacing matches the whole decode.

    With ``kinds`` (per token: "", "reasoning" or "tool"), runs also break where the kind changes and are
    (trained, text, kind)."""
    key = (lambda k: (labels[k] != IGNORE_INDEX, kinds[k])) if kinds else (lambda k: labels[k] != IGNORE_INDEX)
    runs, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or key(k) != key(start):
            runs.append((start, k))
            start = k
    decoded = [""] + [decode(tokenizer, ids[:end]) for _, end in runs]
    out = [(labels[s] != IGNORE_INDEX, decoded[i + 1][len(decoded[i]) :]) for i, (s, _) in enumerate(runs)]
    return [(*o, kinds[s]) for o, (s, _) in zip(out, runs)] if kinds else out


def token_kinds(row: dict) -> list[str]:
    """Per token of a dataset row: "reasoning", "tool" or "" (from its ``_segments`` runs)."""
    kinds = [""] * len(row["input_ids"])
    for start, end, kind in json.loads(row.get("_segments") or "[]"):
        kinds[start:end] = [kind] * (end - start)
    return kinds


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def run(args) -> int:
    """Print examples and the summary; 0 when at least one record is kept, 1 otherwise."""
    if not args.tokenizer:
        raise DataError(
            "no tokenizer given",
            field="--tokenizer",
            fix="pass --tokenizer DIR (a model or tokenizer folder)",
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    from sftlab.data.pipeline import build_dataset

    dataset, report = build_dataset(build_config(args), tokenizer, progress=False, allow_empty=True, segments=True)
    if args.json:
        for row in dataset:
            record = {
                "input_ids": row["input_ids"],
                "labels": row["labels"],
                "text": decode(tokenizer, row["input_ids"]),
                "source": row["source"],
                "origin": row["origin"],
                "length": row["length"],
                "num_trained": row["num_trained"],
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        say(report.format(), stderr=True)
        return 0 if report.records_kept else 1
    color = sys.stdout.isatty() and not args.no_color
    shown = dataset.select(range(min(args.show, len(dataset))))
    if color:
        _print_color(tokenizer, shown, report)
    else:
        for row in shown:
            say(f"--- {row['origin']} ({row['length']} tokens, {row['num_trained']} trained)")
            say(
                "".join(
                    f"[[{t}]]" if trained else t
                    for trained, t in segments(tokenizer, row["input_ids"], row["labels"])
                )
            )
        say("--- summary")
        say(report.format())
    return 0 if report.records_kept else 1


def _print_color(tokenizer, rows, report) -> None:
    from rich.text import Text

    out = console(highlight=False)
    out.print("[bold green]trained[/] · [magenta]reasoning[/] · [cyan]tool calls and results[/] (bold: trained) · [dim]not trained[/]")
    for row in rows:
        out.rule(f"{row['origin']} · {row['length']} tokens, {row['num_trained']} trained", style="dim")
        text = Text()
        for trained, piece, kind in segments(tokenizer, row["input_ids"], row["labels"], token_kinds(row)):
            colour = {"reasoning": "magenta", "tool": "cyan"}.get(kind, "green")
            text.append(piece, style=f"bold {colour}" if trained else (colour if kind else "dim"))
        out.print(text)
    out.rule("summary", style="dim")
    out.print(report.summary_table())
    out.print(report.format())
