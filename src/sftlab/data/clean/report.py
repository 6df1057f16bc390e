"""What the cleaning pass did: per source and operator the records removed (by reason), duplicate cluster
sizes, response length histograms, contamination hits per eval set, selection statistics, timings.

Invariant (``check``): per source, ``records_in == records_kept + removed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OPERATORS = ("validate", "filter", "exact_dedup", "near_dedup", "decontaminate", "select")
COLUMN_NAMES = {
    "validate": "invalid",
    "filter": "filtered",
    "exact_dedup": "exact dup",
    "near_dedup": "near dup",
    "decontaminate": "contaminated",
    "select": "not selected",
}
LENGTH_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def length_histogram(words: np.ndarray) -> dict[str, int]:
    """Counts of response lengths (words) in power-of-two bins.

    >>> length_histogram(np.array([0, 1, 3, 3, 5000]))
    {'0': 1, '1': 1, '2-3': 2, '2048+': 1}
    """
    out: dict[str, int] = {}
    idx = np.searchsorted(np.array(LENGTH_EDGES), words, side="right") - 1
    for k, count in zip(*np.unique(idx, return_counts=True)):
        lo = LENGTH_EDGES[k]
        hi = LENGTH_EDGES[k + 1] - 1 if k + 1 < len(LENGTH_EDGES) else None
        label = f"{lo}+" if hi is None else (str(lo) if hi == lo else f"{lo}-{hi}")
        out[label] = int(count)
    return out


@dataclass
class SourceCleanReport:
    name: str
    records_in: int = 0
    records_kept: int = 0
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # operator -> reason -> records
    response_words_in: dict[str, int] = field(default_factory=dict)  # histogram over valid records
    response_words_kept: dict[str, int] = field(default_factory=dict)
    tokens: int | None = None  # kept records, prompt + response tokens (with a tokenizer)
    response_tokens: int | None = None  # of which response tokens (what the loss trains on)

    @property
    def records_removed(self) -> int:
        return sum(sum(r.values()) for r in self.removed.values())

    def removed_by(self, operator: str) -> int:
        return sum(self.removed.get(operator, {}).values())


@dataclass
class CleanReport:
    records_in: int = 0
    records_kept: int = 0
    per_source: dict[str, SourceCleanReport] = field(default_factory=dict)
    duplicate_clusters: dict[str, dict[int, int]] = field(default_factory=dict)  # exact / near: size -> clusters
    near_dedup: dict[str, Any] = field(default_factory=dict)  # candidate and verified pairs
    contamination: list[dict[str, Any]] = field(default_factory=list)  # one EvalSetReport per eval set
    selection: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)  # operator -> seconds
    examples: dict[str, list[dict]] = field(default_factory=dict)  # operator -> a few removed records
    config: dict[str, Any] = field(default_factory=dict)

    def count(self, source: str, operator: str, reason: str, n: int = 1) -> None:
        by_reason = self.per_source[source].removed.setdefault(operator, {})
        by_reason[reason] = by_reason.get(reason, 0) + n

    def removed_totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in self.per_source.values():
            for op, reasons in s.removed.items():
                for reason, n in reasons.items():
                    out.setdefault(op, {})[reason] = out.setdefault(op, {}).get(reason, 0) + n
        return {op: out[op] for op in sorted(out, key=lambda o: OPERATORS.index(o) if o in OPERATORS else 99)}

    def check(self) -> None:
        for s in self.per_source.values():
            if s.records_in != s.records_kept + s.records_removed:
                raise AssertionError(
                    f"clean report of {s.name} does not add up: {s.records_in} in != {s.records_kept} kept + "
                    f"{s.records_removed} removed"
                )
        if self.records_in != sum(s.records_in for s in self.per_source.values()) or self.records_kept != sum(
            s.records_kept for s in self.per_source.values()
        ):
            raise AssertionError("clean report totals differ from the sum of its sources")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed"] = self.removed_totals()
        return d

    def summary_line(self) -> str:
        parts = [f"{op} {sum(r.values()):,}" for op, r in self.removed_totals().items() if sum(r.values())]
        return (
            f"clean: {self.records_in:,} in, {self.records_kept:,} kept, "
            f"{self.records_in - self.records_kept:,} removed ({', '.join(parts) or 'none'})"
        )

    def table(self):
        """A ``rich`` table: one row per source, one column per operator that removed something."""
        from rich.table import Table

        totals = self.removed_totals()
        ops = [op for op in OPERATORS if sum(totals.get(op, {}).values())]
        table = Table(title="data clean", show_header=True)
        table.add_column("source", justify="left", no_wrap=True)
        for col in ("in", *[COLUMN_NAMES[op] for op in ops], "kept", "kept %"):
            table.add_column(col, justify="right", no_wrap=True)
        for s in self.per_source.values():
            share = 100 * s.records_kept / s.records_in if s.records_in else 0.0
            table.add_row(
                s.name,
                f"{s.records_in:,}",
                *[f"{s.removed_by(op):,}" for op in ops],
                f"{s.records_kept:,}",
                f"{share:.1f}",
            )
        if len(self.per_source) > 1:
            share = 100 * self.records_kept / self.records_in if self.records_in else 0.0
            table.add_row(
                "all",
                f"{self.records_in:,}",
                *[f"{sum(totals[op].values()):,}" for op in ops],
                f"{self.records_kept:,}",
                f"{share:.1f}",
            )
        return table

    def details(self) -> list[str]:
        """Lines under the table: reasons, clusters, contamination, selection."""
        lines = []
        for op, reasons in self.removed_totals().items():
            if sum(reasons.values()):
                lines.append(f"{op}: " + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items())))
        for kind, sizes in self.duplicate_clusters.items():
            if sizes:
                text = ", ".join(f"{n:,} of {size}" for size, n in sorted(sizes.items()))
                lines.append(f"{kind} duplicate clusters (records per cluster): {text}")
        for c in self.contamination:
            lines.append(
                f"eval set {c['name']}: {c['items_hit']:,} of {c['items']:,} items found in training records "
                f"({c['items_too_short']:,} too short to check), {c['records_removed']:,} records removed"
            )
        if self.selection:
            lines.append("selection: " + ", ".join(f"{k} {v}" for k, v in self.selection.items() if k != "per_source"))
        for s in self.per_source.values():
            if s.response_tokens is not None and s.tokens:
                lines.append(
                    f"{s.name}: {s.tokens:,} tokens kept, {100 * s.response_tokens / s.tokens:.1f}% in responses"
                )
        return lines
