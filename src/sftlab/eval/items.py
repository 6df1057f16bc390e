"""Eval data: read small record files and text files, render prompts, normalise gold labels and answers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from sftlab.files import sha256_file

TEXT_SUFFIXES = {".txt", ".raw", ".text", ".md"}
RECORD_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet"}
_FIELD = re.compile(r"\{(\w+)\}")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .json / .csv / .tsv / .parquet file as dicts, in file order.

    A .json file may hold a list of records or ``{"data": [...]}``. Eval sets are small, so jsonl / json /
    csv / tsv are read with the standard library; parquet goes through ``datasets``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of records (or {{'data': [...]}})")
        return data
    if suffix in (".csv", ".tsv"):
        with open(p, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        from datasets import Dataset

        return Dataset.from_parquet(str(p)).to_list()
    raise ValueError(
        f"{p}: unsupported eval file type {suffix!r} (use .jsonl, .json, .csv, .tsv or .parquet)"
    )


def render_prompt(template: str, record: dict[str, Any]) -> str:
    """Fill ``{field}`` placeholders from the record; other braces are kept as written (no str.format)."""

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in record:
            raise KeyError(
                f"prompt_template field {{{name}}} is not a column of the record (has {sorted(record)})"
            )
        return str(record[name])

    return _FIELD.sub(fill, template)


def label_key(value: Any) -> str:
    """The ``label_map`` key of a raw label: ``1``, ``1.0`` and ``"1"`` all map to ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def gold_answers(value: Any) -> list[str]:
    """Gold answers as a list of strings: from a string, a list, or a SQuAD dict ``{"text": [...]}``."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ValueError(f"cannot read gold answers from {type(value).__name__} {value!r}")


def read_text(path: str | Path, prompt_template: str | None = None) -> str:
    """The text of a perplexity task: a plain text file as is, or the records of a data file joined.

    Records contribute their rendered ``prompt_template`` when given, else their ``text`` column; they
    are separated by a blank line.
    """
    p = Path(path)
    if p.suffix.lower() in TEXT_SUFFIXES or p.suffix.lower() not in RECORD_SUFFIXES:
        return p.read_text(encoding="utf-8")
    records = read_records(p)
    if prompt_template:
        return "\n\n".join(render_prompt(prompt_template, r) for r in records)
    if records and "text" not in records[0]:
        raise ValueError(f"{p}: perplexity on a data file needs a 'text' column or a prompt_template")
    return "\n\n".join(str(r["text"]) for r in records)


def hash_file(path: str | Path) -> str:
    """SHA-256 of the file's bytes (identifies the eval data in the scorecard)."""
    return sha256_file(path)
