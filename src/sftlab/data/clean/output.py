"""``sftlab data clean CONFIG|PATHS --out DIR``: the cleaning pass on its own.

Writes ``DIR/kept.jsonl`` (kept records as canonical ``messages``, or ``text`` for language-modelling
records, with ``id`` = where the record came from and ``source``: a valid sftlab source), ``DIR/removed.jsonl`` (every removed record
with its ``operator``, ``reason`` and ``error``; duplicates name the ``duplicate_of`` id, contaminated
records the ``eval_set`` and ``eval_item``) and ``DIR/report.json`` (``CleanReport``), then prints a table.
With a YAML config, its ``data.sources`` and ``data.clean`` are used (``data.clean`` defaults when absent);
with data paths, each path is a source. ``--set data.clean.KEY=VALUE`` overrides either way.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from sftlab.config import CleanConfig, Config, EvalSetConfig, apply_overrides, build_dataclass, load_config
from sftlab.console import console, say
from sftlab.data.errors import DataError
from sftlab.data.formats import FORMATS

DESCRIPTION = (
    "Remove exact and near duplicates, low-quality responses, records containing eval items, and select under a "
    "budget; write kept.jsonl, removed.jsonl (with operator and reason) and report.json."
)
EXAMPLE = "sftlab data clean a.jsonl b.jsonl --out runs/clean --eval-set eval.jsonl --set data.clean.select.by=ifd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="CONFIG|PATHS", help="a YAML config, or data files / folders")
    parser.add_argument("--out", required=True, help="output folder: kept.jsonl, removed.jsonl, report.json")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help="record format of PATHS")
    parser.add_argument("--eval-set", action="append", metavar="PATH", help="decontaminate against this eval file")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. data.clean.dedup.near=none"
    )
    parser.add_argument("--tokenizer", help="count kept tokens with this tokenizer (default: the config's model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(inputs: list[str], fmt: str = "auto", overrides=(), eval_sets=()) -> Config:
    """The run config of a ``data clean`` call: from a YAML file, or data paths as sources."""
    if len(inputs) == 1 and inputs[0].endswith((".yaml", ".yml")):
        cfg = load_config(inputs[0], list(overrides))
    else:
        data = {"data": {"sources": [{"path": p, "format": fmt} for p in inputs]}}
        cfg = build_dataclass(Config, apply_overrides(data, list(overrides)))
    clean = cfg.data.clean or CleanConfig()
    if eval_sets:
        extra = tuple(EvalSetConfig(path=p) for p in eval_sets)
        clean = replace(
            clean, decontaminate=replace(clean.decontaminate, eval_sets=clean.decontaminate.eval_sets + extra)
        )
    return replace(cfg, data=replace(cfg.data, clean=with_default_model(clean, cfg)))


def with_default_model(clean: CleanConfig, cfg: Config) -> CleanConfig:
    """``select.model`` defaults to the run's ``model.name_or_path`` (the base being fine-tuned)."""
    if clean.select.model is None and cfg.model.name_or_path:
        return replace(clean, select=replace(clean.select, model=cfg.model.name_or_path))
    return clean


def iter_output(result):
    """``("kept" | "removed", record)`` for every input record, in source and row order (from the sources
    as the pass read and converted them: ``result.sources``)."""
    records = result.records
    index = {(s, r): i for i, (s, r) in enumerate(zip(records.sources, records.rows))}
    invalid = {(inv.source, inv.row): inv for inv in records.invalid}
    for cs in result.sources:
        loaded, name = cs.loaded, cs.src.name
        for row, (origin, conv) in enumerate(zip(cs.origins, cs.conversations)):
            base = {"id": origin, "source": name}
            if isinstance(conv, DataError):
                inv = invalid[(name, row)]
                raw = loaded.dataset[row]
                raw = raw.get("_raw", raw) if loaded.kind == "json" else raw
                yield (
                    "removed",
                    {**base, "operator": "validate", "reason": inv.reason, "error": inv.error, "record": raw},
                )
                continue
            if conv.kind == "text":  # language-modelling text stays text
                body = {"text": conv.messages[0].content}
            else:
                body = {"messages": [m.to_dict() for m in conv.messages]}
                if conv.tools:
                    body["tools"] = conv.tools
            i = index[(name, row)]
            if i in result.removed:
                yield "removed", {**base, **result.removed[i], **body}
            else:
                yield "kept", {**base, **body}


def count_tokens(result, tokenizer, batch: int = 1000) -> None:
    """Prompt + response tokens of the kept records per source, into the report."""
    records = result.records
    kept = result.kept()
    for s in result.report.per_source.values():
        s.tokens, s.response_tokens = 0, 0
    for start in range(0, len(kept), batch):
        idx = kept[start : start + batch]
        p = tokenizer([records.prompts[i] for i in idx], add_special_tokens=False)["input_ids"]
        r = tokenizer([records.responses[i] for i in idx], add_special_tokens=False)["input_ids"]
        for i, pi, ri in zip(idx, p, r):
            s = result.report.per_source[records.sources[i]]
            s.tokens += len(pi) + len(ri)
            s.response_tokens += len(ri)


def _tokenizer_for(args, cfg: Config):
    name = args.tokenizer or cfg.model.tokenizer or cfg.model.name_or_path
    if not name or (not args.tokenizer and not Path(name).is_dir()):
        return None
    from sftlab.config import ModelConfig
    from sftlab.model.load import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=name))


def run(args: argparse.Namespace) -> int:
    from sftlab.data.clean.apply import clean_sources
    from sftlab.data.pipeline import unique_names

    cfg = resolve_config(args.inputs, args.format, args.set or [], args.eval_set or [])
    if not cfg.data.sources:
        raise DataError("no data sources", field="data.sources", fix="give data files, or a config with data.sources")
    names = unique_names(cfg.data.sources)
    hf_cache = str(Path(cfg.data.cache_dir) / "hf") if cfg.data.cache_dir else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = clean_sources(
        cfg.data.sources, names, cfg.data.clean, hf_cache, cfg.data.mask, progress=not args.no_progress
    )
    tokenizer = _tokenizer_for(args, cfg)
    if tokenizer is not None:
        count_tokens(result, tokenizer)
    kept_f, removed_f = open(out / ".kept.jsonl.tmp", "w", encoding="utf-8"), None
    counts = {"kept": 0, "removed": 0}
    try:
        removed_f = open(out / ".removed.jsonl.tmp", "w", encoding="utf-8")
        for kind, record in iter_output(result):
            (kept_f if kind == "kept" else removed_f).write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            counts[kind] += 1
    finally:
        kept_f.close()
        if removed_f is not None:
            removed_f.close()
    report = result.report
    if counts["kept"] != report.records_kept or counts["removed"] != report.records_in - report.records_kept:
        raise AssertionError(f"written {counts} differ from the report ({report.summary_line()})")
    os.replace(out / ".kept.jsonl.tmp", out / "kept.jsonl")
    os.replace(out / ".removed.jsonl.tmp", out / "removed.jsonl")
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, out / "report.json")
    out_console = console() if console().is_terminal else console(width=160)
    out_console.print(report.table())
    for line in report.details():
        out_console.print(line, highlight=False, markup=False)
    say(f"{report.summary_line()} -> {out}/kept.jsonl, removed.jsonl, report.json")
    return 0
