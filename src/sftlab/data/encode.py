"""Encode one batch of raw rows: read, convert, validate, render, tokenise, mask, truncate.

The worker function of ``datasets.map`` (and of streamed sources). It returns one output row per input row,
so nothing disappears silently: a removed row has empty ids, its reason in ``_status`` and the raw record
with the error in ``_removed`` (for the skipped-records file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftlab.config import SourceConfig
from sftlab.data.errors import TOO_LONG, DataError
from sftlab.data.formats import detect_format, to_conversation
from sftlab.data.render import RenderSpec, encode_rendered, render_text
from sftlab.data.sources import LoadedSource, read_row
from sftlab.data.types import count_trained
from sftlab.data.validate import validate_conversation

COLUMNS = ("input_ids", "labels", "length", "num_trained", "source", "origin")
# _prompt: the record's first reply whose inference prompt is not a prefix of the training text (JSON, or "");
# _reasoning: traces rendered / dropped by the template / written inline by sftlab; _segments: reasoning and tool token runs (JSON)
INTERNAL = ("_status", "_truncated", "_eot", "_mismatch", "_prompt", "_reasoning", "_segments", "_removed")
SKIP_HINT = "or set data.on_error: skip to skip and count such records"
BATCH_SIZE = 512


def output_features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "input_ids": Sequence(Value("int32")),
            "labels": Sequence(Value("int32")),
            "length": Value("int32"),
            "num_trained": Value("int32"),
            "source": Value("string"),
            "origin": Value("string"),
            "_status": Value("string"),
            "_truncated": Value("bool"),
            "_eot": Value("bool"),
            "_mismatch": Value("int32"),
            "_prompt": Value("string"),
            "_reasoning": Sequence(Value("int32")),
            "_segments": Value("string"),
            "_removed": Value("large_string"),
        }
    )


@dataclass
class EncodeContext:
    """What a worker needs to encode a batch of one source (picklable: no dataset inside)."""

    source: LoadedSource
    fmt: str
    source_cfg: SourceConfig
    spec: RenderSpec
    tokenizer: Any
    on_error: str
    # with data.clean, per row what the one conversion made of it (clean/records.py): a Conversation, the
    # DataError that stopped it, or the cleaning pass's removal (a dict: operator, reason, error, ...)
    conversations: list | None = None


def encode_batch(batch: dict[str, list], indices: list[int], ctx: EncodeContext) -> dict[str, list]:
    """Encode one batch of raw rows; one output row per input row (removed rows carry their reason)."""
    out: dict[str, list] = {k: [] for k in COLUMNS + INTERNAL}
    rendered, slots, raws, failures = [], [], {}, {}
    for i, index in enumerate(indices):
        origin = batch["_origin"][i] if ctx.source.kind == "json" else ctx.source.origin(index)
        try:
            conv = _conversation(batch, i, index, origin, ctx, raws)
            if isinstance(conv, dict):  # removed by the cleaning pass: counted under its reason, never rendered
                failures[i] = (conv["reason"], f"{origin}: {conv['error']}", origin,
                               {k: v for k, v in conv.items() if k not in ("reason", "error")})  # fmt: skip
                continue
            rendered.append(render_text(conv, ctx.spec))
            slots.append(i)
        except DataError as e:
            e = e.at(origin)
            if ctx.on_error == "raise":
                raise e.with_fix(SKIP_HINT) from None
            failures[i] = (e.reason, str(e), origin, {})
    encoded = dict(zip(slots, encode_rendered(rendered, ctx.tokenizer, ctx.spec)))
    for i in range(len(indices)):
        enc = encoded.get(i)
        if enc is not None and enc.meta["dropped"]:
            failures[i] = (enc.meta["dropped"], _drop_message(enc, ctx.spec), enc.origin, {})
        if i in failures:
            reason, message, origin, extras = failures[i]
            raw = raws[i] if i in raws else _raw_record(ctx.source, batch, i, origin)
            record = {"origin": origin, "source": ctx.source.name, "reason": reason, "error": message,
                      **extras, "record": raw}  # fmt: skip
            removed = json.dumps(record, ensure_ascii=False, default=str)
            row = _row([], [], ctx.source.name, origin, status=reason, removed=removed)
        else:
            meta = enc.meta
            row = _row(enc.input_ids, enc.labels, enc.source, enc.origin, truncated=meta["truncated"],
                       eot=meta["eot_trained"], mismatch=meta["boundary_mismatches"], meta=meta)  # fmt: skip
        for k, v in row.items():
            out[k].append(v)
    return out


def _conversation(batch: dict[str, list], i: int, index: int, origin: str, ctx: EncodeContext, raws: dict):
    """Row ``i``'s validated ``Conversation`` (read and converted here, or with data.clean the one converted
    before), or the cleaning pass's removal (a dict); raises the ``DataError`` that stopped it."""
    if ctx.conversations is not None:
        item = ctx.conversations[index]
        if isinstance(item, dict) and ctx.source.kind == "json":
            raws[i] = batch["_raw"][i]  # a removed JSON record is written as the line read
        if isinstance(item, DataError):
            raise item
        return item
    row = read_row(ctx.source, batch, i, origin)
    raws[i] = row
    conv = to_conversation(row, ctx.fmt, ctx.source_cfg, origin)
    conv.source = ctx.source.name
    validate_conversation(conv, ctx.spec.mask_policy)
    return conv


def _raw_record(source: LoadedSource, batch: dict[str, list], i: int, origin: str):
    """The record of a removed row for the skipped-records file: the row read, else the JSON line as it is."""
    try:
        return read_row(source, batch, i, origin)
    except DataError:
        return batch["_raw"][i] if source.kind == "json" else None


def _row(ids, labels, source, origin, status="", truncated=False, eot=False, mismatch=0, meta=None,
         removed="") -> dict:  # fmt: skip
    """One output row (see ``output_features``); ``status`` is "" for a kept record, else the reason."""
    meta = meta or {}
    trained = count_trained(labels)
    prompt = json.dumps(meta["prompt_mismatch"], ensure_ascii=False) if meta.get("prompt_mismatch") else ""
    reasoning = meta.get("reasoning") or {}
    return {"input_ids": ids, "labels": labels, "length": len(ids), "num_trained": trained, "source": source,
            "origin": origin, "_status": status, "_truncated": truncated, "_eot": eot, "_mismatch": mismatch,
            "_prompt": prompt, "_reasoning": [reasoning.get(k, 0) for k in ("rendered", "dropped", "inline")],
            "_segments": json.dumps(meta.get("segments") or []), "_removed": removed}  # fmt: skip


def _drop_message(enc, spec: RenderSpec) -> str:
    n = enc.meta["num_tokens"]
    if enc.meta["dropped"] == TOO_LONG:
        return f"{enc.origin}: {n} tokens > max_seq_len {spec.max_seq_len} (truncation: drop)"
    return (
        f"{enc.origin}: no trained token left ({n} tokens, max_seq_len {spec.max_seq_len}, "
        f"{spec.truncation}); a reply cut by truncation is not trained"
    )


def iter_encoded(stream, ctx: EncodeContext):
    """Output rows of a streamed source, encoded batch by batch (row indices count from 0)."""
    start = 0
    for batch in stream.iter(batch_size=BATCH_SIZE):
        n = len(next(iter(batch.values())))
        out = encode_batch(batch, list(range(start, start + n)), ctx)
        start += n
        for i in range(n):
            yield {k: v[i] for k, v in out.items()}


def detect_source_format(loaded: LoadedSource, src: SourceConfig, on_error: str) -> str:
    """Format from the columns (tables) or from the keys of the first readable JSON records."""
    columns = list(loaded.columns)
    if loaded.kind == "json":
        ds = loaded.dataset
        head = ds.take(100) if src.streaming else ds.select(range(min(100, len(ds))))
        first_error = None
        for row in head:
            batch = {k: [v] for k, v in row.items()}
            try:
                record = read_row(loaded, batch, 0, row["_origin"])
                columns = list(record)
                break
            except DataError as e:
                first_error = first_error or e
        else:
            if first_error is not None:
                raise first_error.with_fix(SKIP_HINT) if on_error == "raise" else first_error
            raise DataError("the source has no records", field="path", origin=src.path, fix="check the file")
    try:
        return detect_format(columns, src.columns)
    except DataError as e:
        raise e.at(src.path) from None
