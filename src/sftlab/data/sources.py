"""Load one data source as a ``datasets`` dataset (Arrow, memory-mapped; streamed when asked).

Sources: ``.jsonl`` / ``.json`` (a list, ``{"data": [...]}``, or JSON lines), ``.csv``, ``.tsv``,
``.parquet``, a folder of such files, a dataset saved with ``datasets.save_to_disk``, or a Hugging Face
dataset id (with ``subset``, ``split``, ``revision``).

JSON files are read record by record into a dataset of raw JSON text (``_raw``) with the record's place
(``_origin``, "file.jsonl:12") and any read error (``_error``): a broken line, bytes that are not UTF-8,
or records whose fields change type from line to line then fail (or are skipped) one record at a time with
their line number, instead of failing the whole file inside Arrow's JSON reader.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.config import SourceConfig
from sftlab.data.errors import (
    DUPLICATE_KEY,
    INVALID_JSON,
    NOT_AN_OBJECT,
    NOT_UTF8,
    TOO_DEEP,
    DataError,
    find_data_error,
)

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
SUFFIXES = JSON_SUFFIXES + tuple(TABLE_SUFFIXES)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class LoadedSource:
    dataset: Any  # datasets.Dataset, or datasets.IterableDataset when streaming
    name: str
    kind: str  # "json": columns _origin, _raw, _error; "table": the data's own columns
    files: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # first row index of each file (table sources)
    columns: list[str] = field(default_factory=list)

    def origin(self, index: int) -> str:
        """'file.csv:row 3' for row ``index`` of a table source (1-based within its file)."""
        if not self.files:
            return f"{self.name}:row {index + 1}"
        k = bisect.bisect_right(self.offsets, index) - 1
        return f"{os.path.basename(self.files[k])}:row {index - self.offsets[k] + 1}"


def source_name(cfg: SourceConfig) -> str:
    """The name used in reports: ``cfg.name``, else the file stem (or the last part of a hub id)."""
    if cfg.name:
        return cfg.name
    p = Path(cfg.path.rstrip("/"))
    return p.stem if p.suffix in SUFFIXES else p.name


def list_data_files(path: Path) -> list[Path]:
    """The data files of a file or a folder (recursively, sorted); one family (JSON or tables) only."""
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"unsupported file type {path.suffix!r}",
                field="path",
                origin=str(path),
                fix=f"use one of {', '.join(SUFFIXES)}",
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(
            f"no data files ({', '.join(SUFFIXES)}) in the folder",
            field="path",
            origin=str(path),
            fix="point path at a data file or a folder holding some",
        )
    kinds = {"json" if p.suffix.lower() in JSON_SUFFIXES else p.suffix.lower() for p in files}
    if len(kinds) > 1:
        raise DataError(
            f"the folder mixes file types ({', '.join(sorted(kinds))})",
            field="path",
            origin=str(path),
            fix="keep one type of file per source (JSON / JSONL, or one table type)",
        )
    return files


def hash_files(files: list[Path]) -> str:
    """Content hash of data files (names and bytes); any edit changes it."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def source_fingerprint(cfg: SourceConfig, hf_cache_dir: str | None = None) -> str | None:
    """Content key of a source for the tokenised-data cache; None when unknown (streamed hub data)."""
    path = Path(cfg.path).expanduser()
    if path.exists() and not is_saved_dataset(path):
        return hash_files(list_data_files(path))
    if cfg.streaming and not path.exists():
        return None
    return load_source(cfg, hf_cache_dir).dataset._fingerprint


def check_has_records(files: list[Path]) -> None:
    """A ``DataError`` naming the file when every data file is empty or holds only whitespace."""
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 16), b""):
                if block.strip(b" \t\r\n\xef\xbb\xbf"):
                    return
    what = "is empty (0 bytes)" if all(f.stat().st_size == 0 for f in files) else "holds only blank lines"
    where = files[0].name if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    raise DataError(f"the data {what}: there are no records to read", reason="empty_file", origin=where,
                    fix="point data.sources[].path at a file with records (JSON lines: one object per line)")


def load_source(cfg: SourceConfig, hf_cache_dir: str | None = None) -> LoadedSource:
    """Load ``cfg.path`` (first ``cfg.limit`` records) as a dataset; errors name the path and the fix."""
    if not cfg.path:
        raise DataError(
            "the source has no path", field="data.sources[].path", fix="set path: to a file, folder or hub id"
        )
    path = Path(cfg.path).expanduser()
    name = source_name(cfg)
    if is_saved_dataset(path):
        return _load_saved(path, cfg, name)
    if path.exists():
        files = list_data_files(path)
        check_has_records(files)
        if files[0].suffix.lower() in JSON_SUFFIXES:
            return _load_json(files, cfg, name, hf_cache_dir)
        return _load_tables(files, cfg, name, hf_cache_dir)
    if path.suffix.lower() in SUFFIXES or not _HUB_ID.match(cfg.path):
        raise DataError(
            "file not found",
            field="path",
            origin=cfg.path,
            fix="check the path (relative paths start from the current directory)",
        )
    return _load_hub(cfg, name, hf_cache_dir)


def _limited(ds, limit: int | None, streaming: bool):
    if limit is None:
        return ds
    return ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))


def _load_json(files: list[Path], cfg: SourceConfig, name: str, hf_cache_dir: str | None) -> LoadedSource:
    from datasets import Dataset, Features, IterableDataset, Value

    features = Features(
        {"_origin": Value("string"), "_raw": Value("large_string"), "_error": Value("string")}
    )
    kwargs = {"paths": [str(f) for f in files], "limit": cfg.limit}
    if cfg.streaming:
        ds = IterableDataset.from_generator(iter_json_records, features=features, gen_kwargs=kwargs)
    else:
        # The content hash keys datasets' own cache of this conversion: an edited file is read again.
        kwargs["content_hash"] = hash_files(files)
        try:
            ds = Dataset.from_generator(
                iter_json_records, features=features, gen_kwargs=kwargs, cache_dir=hf_cache_dir
            )
        except Exception as e:  # datasets wraps errors of the generator: surface ours
            raise find_data_error(e) or e from None
    return LoadedSource(ds, name, "json", [str(f) for f in files])


def _load_tables(files: list[Path], cfg: SourceConfig, name: str, hf_cache_dir: str | None) -> LoadedSource:
    from datasets import concatenate_datasets, load_dataset

    parts, offsets, start = [], [], 0
    groups = [[f] for f in files] if not cfg.streaming else [files]
    for group in groups:
        builder = TABLE_SUFFIXES[group[0].suffix.lower()]
        kwargs: dict[str, Any] = {}
        if builder == "csv":
            # Keep text as text ("NA", "null" are sentences too); TSV files are not quoted (GLUE style).
            kwargs = {"keep_default_na": False, "na_filter": False}
            if group[0].suffix.lower() == ".tsv":
                kwargs.update(delimiter="\t", quoting=3)
        try:
            ds = load_dataset(
                builder,
                data_files=[str(f) for f in group],
                split="train",
                streaming=cfg.streaming,
                cache_dir=hf_cache_dir,
                **kwargs,
            )
        except Exception as e:  # pandas / pyarrow parse errors, decoding errors
            raise DataError(
                f"cannot read the file: {_first_line(e)}",
                field="path",
                origin=str(group[0]),
                fix="check the file is valid (UTF-8, same number of columns on every line)",
            ) from None
        parts.append(ds)
        offsets.append(start)
        start += 0 if cfg.streaming else len(ds)
    try:
        ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    except ValueError as e:
        raise DataError(
            f"the files do not have the same columns: {_first_line(e)}",
            field="path",
            origin=cfg.path,
            fix="give every file the same columns, or use one source per file",
        ) from None
    ds = _limited(ds, cfg.limit, cfg.streaming)
    columns = list(ds.column_names or [])
    return LoadedSource(
        ds, name, "table", [str(f) for f in files] if not cfg.streaming else [], offsets, columns
    )


def _load_saved(path: Path, cfg: SourceConfig, name: str) -> LoadedSource:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if cfg.split not in ds:
            raise DataError(
                f"split {cfg.split!r} not found (splits: {', '.join(ds)})",
                field="split",
                origin=str(path),
                fix="set split: to one of them",
            )
        ds = ds[cfg.split]
    if cfg.streaming:
        ds = ds.to_iterable_dataset()
    ds = _limited(ds, cfg.limit, cfg.streaming)
    return LoadedSource(ds, name, "table", columns=list(ds.column_names or []))


def _load_hub(cfg: SourceConfig, name: str, hf_cache_dir: str | None) -> LoadedSource:
    import datasets

    try:
        ds = datasets.load_dataset(
            cfg.path,
            name=cfg.subset,
            split=cfg.split,
            revision=cfg.revision,
            streaming=cfg.streaming,
            cache_dir=hf_cache_dir,
        )
    except Exception as e:  # offline, no such repo, no such split or config
        raise DataError(
            f"cannot load the dataset: {_first_line(e)}",
            field="path",
            origin=cfg.path,
            fix="check the id, subset and split (and the network), or download it to a local file",
        ) from None
    ds = _limited(ds, cfg.limit, cfg.streaming)
    return LoadedSource(ds, name, "table", columns=list(ds.column_names or []))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------ JSON records


def iter_json_records(paths: list[str], limit: int | None = None, content_hash: str = "") -> Iterator[dict]:
    """Rows ``{_origin, _raw, _error}`` of JSON / JSONL files, one per record, at most ``limit``."""
    n = 0
    for path in paths:
        name = Path(path).name
        records = _iter_jsonl(path) if not path.endswith(".json") else _iter_json_document(path)
        for where, raw, error in records:
            if limit is not None and n >= limit:
                return
            yield {"_origin": f"{name}:{where}", "_raw": raw, "_error": error}
            n += 1


def _iter_jsonl(path: str) -> Iterator[tuple[str, str, str]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # UTF-8 byte order mark
            if not line.strip():
                continue  # blank lines are not records
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    str(lineno),
                    line.decode("utf-8", "backslashreplace").strip(),
                    (f"{NOT_UTF8}: byte {e.start} of the line is not valid UTF-8"),
                )
                continue
            yield str(lineno), text.strip(), ""


def _iter_json_document(path: str) -> Iterator[tuple[str, str, str]]:
    """A JSON list (record by record, with line numbers), ``{"data": [...]}``, or JSON lines named .json."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"byte {e.start} is not valid UTF-8",
            reason=NOT_UTF8,
            origin=f"{path}:{line}",
            fix="re-save the file as UTF-8",
        ) from None
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _iter_json_list(text, start, path)
        return
    try:
        doc = json.loads(text)
    except RecursionError:
        raise DataError("the document is nested too deeply to read", reason=TOO_DEEP, origin=Path(path).name,
                        fix="flatten the records, or write them as JSON lines (.jsonl) so one can be skipped") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON objects, one per line: JSON lines with a .json name
            yield from _iter_jsonl(path)
            return
        raise _document_error(path, e) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        for i, item in enumerate(doc["data"], 1):
            yield f"record {i}", json.dumps(item, ensure_ascii=False), ""
    else:
        yield "1", text.strip(), ""


def _iter_json_list(text: str, pos: int, path: str) -> Iterator[tuple[str, str, str]]:
    decoder, line, counted = json.JSONDecoder(), 1, 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip(pos + 1)
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise _document_error(path, e) from None
        except RecursionError:
            raise DataError("a record is nested too deeply to read", reason=TOO_DEEP,
                            origin=f"{Path(path).name}:{line}",
                            fix="flatten the record, or write the data as JSON lines (.jsonl) so it can be skipped"
                            ) from None
        yield str(line), text[pos:end], ""
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            e = json.JSONDecodeError("Expecting ',' delimiter", text, min(pos, len(text) - 1))
            raise _document_error(path, e) from None


def _document_error(path: str, e: json.JSONDecodeError) -> DataError:
    return DataError(
        f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
        reason=INVALID_JSON,
        origin=f"{Path(path).name}:{e.lineno}",
        fix="a .json file must be valid as a whole; repair it, or convert it to JSON lines (.jsonl) so "
        "that bad "
        "records can be skipped one by one",
    )


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


def read_row(source: LoadedSource, batch: dict[str, list], i: int, origin: str = "") -> dict:
    """Row ``i`` of a batch as a dict; raises ``DataError`` (at ``origin``) for unreadable JSON records."""
    if source.kind != "json":
        return {k: v[i] for k, v in batch.items() if not k.startswith("_")}
    raw, error = batch["_raw"][i], batch["_error"][i]
    if error:
        reason, _, problem = error.partition(": ")
        raise DataError(problem, reason=reason, origin=origin, fix="re-save the file as UTF-8")
    try:
        row = json.loads(raw, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(
            f"not valid JSON: {e.msg} at column {e.colno} (the line may be cut short)",
            reason=INVALID_JSON,
            origin=origin,
            fix="repair or remove the line",
        ) from None
    except _DuplicateKey as e:
        raise DataError(
            f"the key {e.args[0]!r} appears twice in one object (JSON readers keep one of them silently)",
            reason=DUPLICATE_KEY,
            origin=origin,
            fix="keep one value per key",
        ) from None
    except RecursionError:
        raise DataError(
            "the record is nested too deeply to read",
            reason=TOO_DEEP,
            origin=origin,
            fix="flatten or remove the record",
        ) from None
    if not isinstance(row, dict):
        raise DataError(
            f"a record must be a JSON object, got {type(row).__name__}",
            reason=NOT_AN_OBJECT,
            origin=origin,
            fix='write one object per record, e.g. {"text": "..."}',
        )
    return row
