"""Sources -> tokenised training dataset + ``DataReport``: load, convert, validate, render, mask, truncate.

Each source is tokenised by ``datasets.map`` in parallel batches (``data.num_proc``, worker: encode.py);
one row of the mapped table per input record, removed records with their reason, so that the counts
always add up.
The result is cached on disk (see cache.py); a second call with the same inputs re-tokenises nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from sftlab.config import DataConfig, SourceConfig
from sftlab.console import say, warn
from sftlab.data import cache
from sftlab.data.encode import (
    BATCH_SIZE,
    INTERNAL,
    EncodeContext,
    detect_source_format,
    encode_batch,
    iter_encoded,
    output_features,
)
from sftlab.data.errors import DataError, find_data_error
from sftlab.data.mixing import mix_dataset, specs_from_sources
from sftlab.data.render import RenderSpec, build_render_spec
from sftlab.data.report import DataReport, add_source, removal_warnings, source_report, token_stats
from sftlab.data.sources import load_source, source_fingerprint, source_name
from sftlab.data.templates import resolve_chat_template, split_markers, template_name

log = logging.getLogger(__name__)


def build_dataset(
    data_cfg: DataConfig,
    tokenizer,
    *,
    sources: tuple[SourceConfig, ...] | None = None,
    skipped_path: str | None = None,
    progress: bool = True,
    allow_empty: bool = False,
    mix: bool = True,
    segments: bool = False,
):
    """(dataset, report): columns input_ids, labels (-100: no loss), length, num_trained, source, origin
    (and ``_segments``, JSON token runs of reasoning and tool text, with ``segments``: data inspect).

    Removed records (validation failures with ``on_error: skip``, empty masks, too long with ``drop``) are
    written with their reason to ``skipped_path`` (JSONL) when given. Raises ``DataError`` for a bad record
    with ``on_error: raise``, and when no record is left (unless ``allow_empty``).
    With ``mix`` the sources are mixed as their weight / count / fraction and ``data.mixture`` say (see
    mixing.py); ``mix=False`` returns every kept record once, for callers that hold records out first.
    """
    with _progress_bars(progress):
        dataset, report = _build(data_cfg, tokenizer, sources, skipped_path, allow_empty, segments)
    for line in removal_warnings(report, data_cfg.warn_removed_share, skipped_path):
        say(f"warning: {line}" if not line.startswith(" ") else line, stderr=True)
    if report.prompt_warning and progress:  # data inspect shows it in its summary
        warn(report.prompt_warning, stderr=True)
    # ---- mixing: after every source is built, as the last step (sampling needs no tokenising, so it runs
    # after the cache and a change of weights re-tokenises nothing)
    if mix:
        dataset, report.mixture = mix_sources(
            dataset, tuple(data_cfg.sources if sources is None else sources), data_cfg.mixture
        )
    return dataset, report


def mix_sources(dataset, sources: tuple[SourceConfig, ...], mixture):
    """(mixed dataset, mixture report) of a built dataset whose rows carry their source name."""
    if len(dataset) == 0:
        return dataset, {}
    return mix_dataset(dataset, specs_from_sources(sources, unique_names(sources)), mixture)


def _build(data_cfg: DataConfig, tokenizer, sources, skipped_path: str | None, allow_empty: bool, segments: bool):
    t0 = time.perf_counter()
    sources = tuple(data_cfg.sources if sources is None else sources)
    if not sources:
        raise DataError(
            "no data sources", field="data.sources", fix="add one, e.g. data.sources: [{path: train.jsonl}]"
        )
    spec = render_spec(data_cfg, tokenizer)
    hf_cache = str(Path(data_cfg.cache_dir) / "hf") if data_cfg.cache_dir else None
    names = unique_names(sources)
    cached = data_cfg.cache_dir and not segments
    key = _cache_key(data_cfg, sources, names, tokenizer, spec, hf_cache) if cached else None
    hit = cache.load_entry(data_cfg.cache_dir, key) if key else None
    if hit:
        dataset, report_dict, removed_file = hit
        report = DataReport.from_dict(report_dict)
        report.from_cache, report.elapsed_s = True, round(time.perf_counter() - t0, 3)
        _copy_removed(removed_file, skipped_path)
        return dataset, report
    report = DataReport(
        template=data_cfg.template or "tokenizer",
        chat_template_kwargs=dict(data_cfg.chat_template_kwargs),
        reasoning=data_cfg.reasoning,
        tool_format=data_cfg.tool_format,
        mask=data_cfg.mask,
        max_seq_len=data_cfg.max_seq_len,
        truncation=data_cfg.truncation,
        cache_key=key,
    )
    # ---- cleaning (data.clean, clean/): dedup, filters, decontamination, selection on the conversations of
    # all sources, before rendering and mixing; each source is read and converted once, and its conversations
    # are encoded as converted; a removed record stays a row of its source, with its reason
    converted = {}
    if data_cfg.clean is not None:
        import datasets

        from sftlab.data.clean.apply import clean_sources

        cleaned = clean_sources(sources, names, data_cfg.clean, hf_cache, data_cfg.mask,
                                progress=datasets.is_progress_bar_enabled())  # fmt: skip
        converted, report.clean = cleaned.to_encode(), cleaned.report.to_dict()
    parts, removed = [], []
    for src, name in zip(sources, names):
        kept, removed_part, stats = encode_source(
            replace(src, name=name), tokenizer, spec, data_cfg, hf_cache, converted=converted.get(name)
        )
        parts.append(kept)
        removed.append(removed_part)
        add_source(report, stats)
    dataset = _concat(parts)
    removed_ds = _concat(removed).select_columns(["_removed"])
    _finish_report(report, dataset, removed_ds, tokenizer, spec, sources)
    dataset = dataset.remove_columns([c for c in INTERNAL if not (segments and c == "_segments")])
    if not report.records_kept and not allow_empty:
        raise DataError(
            f"no records left to train on ({report.summary_line()})",
            field="data.sources",
            fix="see the removed records and their reasons" + (f" in {skipped_path}" if skipped_path else ""),
        )
    removed_file = _write_removed(removed_ds, skipped_path, data_cfg.cache_dir)
    if key:
        dataset = cache.save_entry(data_cfg.cache_dir, key, dataset, report.to_dict(), removed_file)
    if removed_file is not None and skipped_path is None:
        removed_file.unlink(missing_ok=True)
    report.elapsed_s = round(time.perf_counter() - t0, 3)
    log.info("data: %s", report.summary_line())
    return dataset, report


def render_spec(data_cfg: DataConfig, tokenizer) -> RenderSpec:
    """The render settings of ``data_cfg`` for ``tokenizer`` (its template, kwargs, reasoning, tools)."""
    return build_render_spec(
        tokenizer,
        resolve_chat_template(data_cfg.template, tokenizer),
        data_cfg.mask,
        data_cfg.max_seq_len,
        data_cfg.truncation,
        chat_template_kwargs=data_cfg.chat_template_kwargs,
        reasoning=data_cfg.reasoning,
        reasoning_mask=data_cfg.reasoning_mask,
        tool_format=data_cfg.tool_format,
        name=template_name(data_cfg.template, tokenizer),
    )


def encode_source(
    src: SourceConfig, tokenizer, spec: RenderSpec, data_cfg: DataConfig, hf_cache: str | None, converted=None
):
    """(kept rows, removed rows, SourceReport) of one source; rows as in ``encode.output_features``.

    ``converted``: the source as data.clean read and converted it (``clean.records.ConvertedSource``, removed
    rows holding their removal): encoded as it is, without reading the source again."""
    if converted is not None:
        loaded, fmt, conversations = converted.loaded, converted.fmt, converted.conversations
    else:
        loaded, conversations = load_source(src, hf_cache), None
        fmt = src.format if src.format != "auto" else detect_source_format(loaded, src, data_cfg.on_error)
    ctx = EncodeContext(replace(loaded, dataset=None), fmt, src, spec, tokenizer, data_cfg.on_error, conversations)
    ds = loaded.dataset
    if src.streaming:
        mapped = _encode_stream(ds, ctx, hf_cache)
    elif len(ds) == 0:
        from datasets import Dataset

        mapped = Dataset.from_dict({k: [] for k in output_features()}, features=output_features())
    else:
        num_proc = data_cfg.num_proc if data_cfg.num_proc > 1 and len(ds) >= 4 * BATCH_SIZE else None
        if num_proc:
            # Rust-side threads in forked workers can deadlock; datasets' processes give the parallelism.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        mapped = ds.map(
            encode_batch,
            batched=True,
            batch_size=BATCH_SIZE,
            with_indices=True,
            remove_columns=ds.column_names,
            features=output_features(),
            fn_kwargs={"ctx": ctx},
            num_proc=num_proc,
            load_from_cache_file=False,
            new_fingerprint=_map_fingerprint(ds, ctx),
            desc=f"tokenising {src.name}",
        )
    cols = mapped.select_columns(["_status", "_truncated", "length", "num_trained"]).to_dict()
    stats = source_report(src.name, src.path, fmt, cols)
    kept_idx = [i for i, s in enumerate(cols["_status"]) if not s]
    if len(kept_idx) == len(mapped):
        return mapped, mapped.select([]), stats
    return mapped.select(kept_idx), mapped.select([i for i, s in enumerate(cols["_status"]) if s]), stats


def _map_fingerprint(ds, ctx: EncodeContext) -> str:
    """Deterministic name of the mapped files: a rerun overwrites them instead of adding new ones."""
    parts = [
        ds._fingerprint,
        ctx.source_cfg,
        ctx.fmt,
        ctx.spec,
        ctx.on_error,
        cache.tokenizer_fingerprint(ctx.tokenizer),
    ]
    removals = [(k, c["reason"]) for k, c in enumerate(ctx.conversations or ()) if isinstance(c, dict)]
    if removals:
        parts.append(removals)
    return cache.cache_key({"map": parts})[:16]


def _encode_stream(stream, ctx: EncodeContext, hf_cache: str | None):
    from datasets import Dataset

    try:
        return Dataset.from_generator(
            iter_encoded,
            features=output_features(),
            cache_dir=hf_cache,
            gen_kwargs={"stream": stream, "ctx": ctx},
            fingerprint=uuid.uuid4().hex,
        )
    except Exception as e:  # datasets wraps errors raised while generating: surface ours
        raise find_data_error(e) or e from None


def unique_names(sources) -> list[str]:
    """The name of each source (its ``name``, else its file stem), numbered from the second on when repeated:
    the ``source`` of its records, and the name mixing, stages and reports use."""
    names, seen = [], {}
    for src in sources:
        name = source_name(src)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def _cache_key(data_cfg, sources, names, tokenizer, spec: RenderSpec, hf_cache) -> str | None:
    from sftlab.data.clean.apply import clean_fingerprint

    contents = [source_fingerprint(s, hf_cache) for s in sources]
    if any(c is None for c in contents):
        return None  # streamed hub data: content unknown, never cached
    return cache.cache_key(
        {
            # mixing settings are left out: mixing runs after the cache (see build_dataset)
            "sources": [
                {"cfg": replace(s, weight=None, count=None, fraction=None), "name": n, "content": c}
                for s, n, c in zip(sources, names, contents)
            ],
            "tokenizer": cache.tokenizer_fingerprint(tokenizer),
            "template": cache.sha(spec.template_text),
            "plain": cache.sha(spec.plain_text),
            "mask": data_cfg.mask,
            "chat_template_kwargs": data_cfg.chat_template_kwargs,
            "reasoning": [data_cfg.reasoning, data_cfg.reasoning_mask],
            "tool_format": data_cfg.tool_format,
            "max_seq_len": data_cfg.max_seq_len,
            "truncation": data_cfg.truncation,
            "on_error": data_cfg.on_error,
            **({"clean": clean_fingerprint(data_cfg.clean, hf_cache)} if data_cfg.clean is not None else {}),
        }
    )


def _concat(parts):
    from datasets import concatenate_datasets

    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _finish_report(report: DataReport, dataset, removed, tokenizer, spec: RenderSpec, sources) -> None:
    names = ["length", "num_trained", "origin", "_eot", "_mismatch", "_prompt", "_reasoning"]
    cols = dataset.select_columns(names).to_dict()
    for k, v in token_stats(cols["length"], cols["num_trained"]).items():
        setattr(report, k, v)
    report.records_without_eot = sum(not e for e in cols["_eot"])
    report.boundary_mismatches = sum(cols["_mismatch"])
    mismatches = [(o, json.loads(p)) for o, p in zip(cols["origin"], cols["_prompt"]) if p]
    report.prompt_mismatches = len(mismatches)
    report.prompt_warning = prompt_warning(mismatches, report.records_kept)
    if report.prompt_warning:
        report.warnings.append(report.prompt_warning)
    report.reasoning_rendered = sum(r[0] for r in cols["_reasoning"])
    report.reasoning_dropped = sum(r[1] for r in cols["_reasoning"])
    report.reasoning_inline = sum(r[2] for r in cols["_reasoning"] if len(r) > 2)
    if report.reasoning_inline and spec.reasoning == "template":
        report.warnings.append(inline_warning(report.reasoning_inline, spec.template_name))
    first = removed.select(range(min(20, len(removed))))["_removed"]
    report.examples_removed = [{k: json.loads(r)[k] for k in ("origin", "reason", "error")} for r in first]
    if report.records_kept and report.records_without_eot == report.records_kept:
        split = split_markers(tokenizer, spec.eot_strings)
        report.eot_warning = (
            "no trained span contains an end-of-turn token "
            f"({', '.join(spec.eot_strings) or 'the tokenizer has no eos'}): the model will not learn to stop"
        )
        if split:
            report.eot_warning += (
                f"; {', '.join(split)} is not a single token of this tokenizer (add it as a "
                "special token and resize the embeddings, or use data.template: plain)"
            )
    elif report.records_without_eot:
        report.warnings.append(
            f"{report.records_without_eot:,} kept records have no trained end-of-turn token "
            "(e.g. language-modelling text cut by truncation)"
        )
    if report.boundary_mismatches:
        report.warnings.append(
            f"{report.boundary_mismatches:,} tokens straddle a trained-span border (the "
            "template's markup merges with the content when tokenised); they are trained"
        )
    report.check()


def inline_warning(n: int, template: str) -> str:
    """One line: ``n`` traces of final replies written inline because the template has no place for them."""
    return (
        f"{n:,} reasoning traces of final replies (after the last user message) were written inline, as "
        f"<think>...</think> before the reply as the data has them, because {template} renders no reasoning "
        "there (data.reasoning: template); the model learns to write them so. Set data.reasoning: drop to "
        "train the replies without them"
    )


def prompt_warning(mismatches: list[tuple[str, dict]], kept: int) -> str:
    """One line: how many records train a reply after a prompt that inference never shows, the first one,
    and what to set. ``mismatches``: (origin, {turn, last, adds}) of each such record."""
    if not mismatches:
        return ""
    origin, first = mismatches[0]
    head = (
        f"{len(mismatches):,} of {kept:,} records train a reply whose inference prompt is not a prefix of the "
        f"training text: at inference the generation prompt goes on with {first['adds']!r} where training has "
        f"the reply (first: {origin}, message {first['turn']})"
    )
    if not any(m["last"] for _, m in mismatches):
        fix = ("only earlier replies, which the template writes differently once they are history: set "
               "data.mask: last_assistant to train final replies only")  # fmt: skip
    elif "<think>" in first["adds"]:
        fix = ("the prompt opens a reasoning block that training never has before a reply: train replies with "
               "reasoning (reasoning_content or <think>...</think>, data.reasoning: keep) on a template that "
               "renders it, set data.chat_template_kwargs where the template has a switch (e.g. "
               "{enable_thinking: false}), or use data.template: FILE whose generation prompt matches")  # fmt: skip
    else:
        fix = "set data.chat_template_kwargs, or use data.template: FILE whose generation prompt matches its replies"
    return f"{head}; {fix}"


def _write_removed(removed, skipped_path: str | None, cache_dir: str | None) -> Path | None:
    """Removed records as JSONL: at ``skipped_path`` when given, else a temporary file for the cache."""
    if skipped_path is None and not cache_dir:
        return None
    path = Path(skipped_path) if skipped_path else Path(cache_dir) / f".removed-{uuid.uuid4().hex[:8]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for batch in removed.iter(batch_size=1000):
            f.writelines(line + "\n" for line in batch["_removed"])
    return path


def _copy_removed(removed_file: Path, skipped_path: str | None) -> None:
    if skipped_path:
        Path(skipped_path).parent.mkdir(parents=True, exist_ok=True)
        Path(skipped_path).write_bytes(removed_file.read_bytes() if removed_file.is_file() else b"")


@contextmanager
def _progress_bars(enabled: bool):
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()
