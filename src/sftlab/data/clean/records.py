"""The records the cleaning operators see: per record its id, source, row, prompt text and response text.

Built from the canonical conversations (formats.py), so every input format is cleaned the same way. Each
source is read and converted once (``convert_source`` -> ``ConvertedSource``, whose conversations the data
pipeline then encodes); the views are kept column-wise as plain strings. The views:

- ``response``: the last assistant turn (its text and any tool calls as JSON);
- ``prompt``: every non-system turn before it, one per line (system prompts are left out: the same system
  prompt on every record would make all short records look alike);
- ``conversation``: prompt and response together.

A record that cannot be read or converted is not cleaned; it is listed in ``Records.invalid`` with its
reason (the data pipeline removes and counts it when it renders the source).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from sftlab.config import SourceConfig
from sftlab.data.errors import DataError
from sftlab.data.formats import to_conversation
from sftlab.data.sources import LoadedSource, load_source, read_row
from sftlab.data.types import Conversation
from sftlab.data.validate import validate_conversation

READ_BATCH = 1000


@dataclass
class InvalidRecord:
    source: str
    row: int
    origin: str
    reason: str
    error: str


@dataclass
class Records:
    """Column-wise records of one or more sources, in source order then row order."""

    ids: list[str] = field(default_factory=list)  # "file.jsonl:12" / "train.tsv:row 3"
    sources: list[str] = field(default_factory=list)  # source name
    rows: list[int] = field(default_factory=list)  # row index within its source
    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    invalid: list[InvalidRecord] = field(default_factory=list)
    source_names: list[str] = field(default_factory=list)  # every source read, in order (some may be empty)

    def __len__(self) -> int:
        return len(self.ids)

    def records_in(self) -> dict[str, int]:
        """Source -> records read (valid + invalid), in source order."""
        counts = dict.fromkeys(self.source_names, 0)
        for name in self.sources:
            counts[name] = counts.get(name, 0) + 1
        for inv in self.invalid:
            counts[inv.source] = counts.get(inv.source, 0) + 1
        return counts

    def add(self, id_: str, source: str, row: int, prompt: str, response: str) -> None:
        self.ids.append(id_)
        self.sources.append(source)
        self.rows.append(row)
        self.prompts.append(prompt)
        self.responses.append(response)

    def conversations(self) -> Iterator[str]:
        """The conversation view: prompt and response of each record, one text (made on the fly)."""
        return (f"{p}\n{r}" if p else r for p, r in zip(self.prompts, self.responses))


def conversation_views(conv: Conversation) -> tuple[str, str]:
    """``(prompt, response)`` of a conversation (see the module docstring).

    >>> from sftlab.data.types import Message
    >>> conversation_views(Conversation([Message("system", "Be brief."), Message("user", "Hi?"),
    ...                                  Message("assistant", "Hello.")]))
    ('Hi?', 'Hello.')
    """
    turns = [m for m in conv.messages if m.role != "system"]
    last = max((i for i, m in enumerate(turns) if m.role == "assistant"), default=None)
    if last is None:
        return "\n".join(m.content for m in turns if m.content), ""
    response = turns[last].content or ""
    if turns[last].tool_calls:
        response = f"{response}\n{json.dumps(turns[last].tool_calls, ensure_ascii=False)}".strip()
    return "\n".join(m.content for m in turns[:last] if m.content), response


def iter_source(
    loaded: LoadedSource, fmt: str, src: SourceConfig, mask: str = "auto"
) -> Iterator[tuple[int, str, Conversation | DataError]]:
    """``(row, origin, conversation or the DataError that stopped it)`` for every record of a loaded source."""
    ds = loaded.dataset
    json_rows = loaded.kind == "json"
    for start in range(0, len(ds), READ_BATCH):
        batch = ds[start : start + READ_BATCH]
        for i in range(len(next(iter(batch.values())))):
            row = start + i
            origin = batch["_origin"][i] if json_rows else loaded.origin(row)
            try:
                conv = to_conversation(read_row(loaded, batch, i, origin), fmt, src, origin)
                conv.source = loaded.name
                validate_conversation(conv, mask)
                yield row, origin, conv
            except DataError as e:
                yield row, origin, e.at(origin)


def open_source(src: SourceConfig, name: str, hf_cache: str | None, on_error: str = "skip"):
    """``(loaded source, format)`` of one configured source; streaming sources cannot be cleaned."""
    from sftlab.data.encode import detect_source_format

    if src.streaming:
        raise DataError(
            "data.clean needs the whole source (duplicates can be anywhere), not a stream",
            field="data.sources[].streaming",
            origin=src.path,
            fix="set streaming: false for this source, or remove data.clean",
        )
    src = replace(src, name=name)
    loaded = load_source(src, hf_cache)
    fmt = src.format if src.format != "auto" else detect_source_format(loaded, src, on_error)
    return loaded, fmt


@dataclass
class ConvertedSource:
    """One source read once, each row converted once: the data pipeline cleans these conversations and then
    encodes them without reading or converting the source again."""

    src: SourceConfig  # with its unique name
    loaded: LoadedSource
    fmt: str
    conversations: list = field(default_factory=list)  # per row: a validated Conversation, or its DataError
    origins: list[str] = field(default_factory=list)  # per row: where it came from ("file.jsonl:12")


def convert_source(src: SourceConfig, name: str, hf_cache: str | None = None, mask: str = "auto",
                   progress=None) -> ConvertedSource:  # fmt: skip
    """Every row of one source as a conversation (or the error that stopped it); see ``open_source``."""
    loaded, fmt = open_source(src, name, hf_cache)
    converted = ConvertedSource(replace(src, name=name), loaded, fmt)
    for _, origin, conv in iter_source(loaded, fmt, converted.src, mask):
        converted.origins.append(origin)
        converted.conversations.append(conv)
        if progress is not None and len(converted.origins) % READ_BATCH == 0:
            progress(READ_BATCH)
    if progress is not None:
        progress(len(converted.origins) % READ_BATCH)
    return converted


def records_of(converted: list[ConvertedSource]) -> Records:
    """The cleaning views of converted sources (in order), their invalid records listed with the reason."""
    records = Records()
    for cs in converted:
        name = cs.src.name
        for row, (origin, conv) in enumerate(zip(cs.origins, cs.conversations)):
            if isinstance(conv, DataError):
                records.invalid.append(InvalidRecord(name, row, origin, conv.reason, str(conv)))
            else:
                records.add(origin, name, row, *conversation_views(conv))
        records.source_names.append(name)
    return records


def load_records(
    sources: tuple[SourceConfig, ...],
    names: list[str],
    hf_cache: str | None = None,
    mask: str = "auto",
    progress=None,
) -> Records:
    """Records of every source (in order), their invalid records listed with the reason."""
    return records_of([convert_source(src, name, hf_cache, mask, progress) for src, name in zip(sources, names)])
