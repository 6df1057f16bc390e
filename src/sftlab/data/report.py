"""What happened to the data: counts per reason, token statistics, and the warnings that matter for SFT.

Invariant (checked when the report is built): ``records_in == records_kept + sum(skipped.values()) +
dropped_empty_mask + dropped_too_long``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def token_stats(lengths, trained) -> dict[str, Any]:
    """Length distribution and trained-token share of kept records.

    >>> token_stats([2, 4, 6], [1, 1, 2])["trained_share"]
    0.3333
    """
    lengths, trained = np.asarray(lengths, dtype=np.int64), np.asarray(trained, dtype=np.int64)
    total = int(lengths.sum())
    if not len(lengths):
        return {
            "length_min": 0,
            "length_median": 0.0,
            "length_p95": 0.0,
            "length_max": 0,
            "length_mean": 0.0,
            "total_tokens": 0,
            "trained_tokens": 0,
            "trained_share": 0.0,
        }
    return {
        "length_min": int(lengths.min()),
        "length_median": float(np.median(lengths)),
        "length_p95": float(np.percentile(lengths, 95)),
        "length_max": int(lengths.max()),
        "length_mean": round(float(lengths.mean()), 2),
        "total_tokens": total,
        "trained_tokens": int(trained.sum()),
        "trained_share": round(float(trained.sum()) / max(total, 1), 4),
    }


@dataclass
class SourceReport:
    name: str
    path: str
    format: str
    records_in: int = 0
    records_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped_empty_mask: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0


@dataclass
class DataReport:
    records_in: int = 0
    records_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # validation reason -> records
    dropped_empty_mask: int = 0  # nothing left to train after truncation
    dropped_too_long: int = 0  # truncation: drop
    truncated: int = 0  # kept records that were cut to max_seq_len
    per_source: dict[str, SourceReport] = field(default_factory=dict)
    length_min: int = 0
    length_median: float = 0.0
    length_p95: float = 0.0
    length_max: int = 0
    length_mean: float = 0.0
    total_tokens: int = 0
    trained_tokens: int = 0
    trained_share: float = 0.0
    eot_warning: str = ""  # non-empty: trained spans never contain an end-of-turn token
    records_without_eot: int = 0  # kept records none of whose trained tokens is an end-of-turn token
    boundary_mismatches: int = 0  # tokens straddling a trained-span border (see render.py)
    prompt_mismatches: int = 0  # kept records with a reply whose inference prompt is not a prefix of the training text
    prompt_warning: str = ""  # non-empty: what the inference prompt adds that training never has, and what to set
    reasoning_rendered: int = 0  # reasoning traces the template wrote (trained unless data.reasoning_mask says not)
    reasoning_dropped: int = 0  # reasoning traces the template left out (data.reasoning: template)
    # of the traces rendered, those sftlab wrote inline as <think>...</think> before the reply (the template has
    # no place for them: data.reasoning: keep, or the final replies' traces with data.reasoning: template)
    reasoning_inline: int = 0
    warnings: list[str] = field(default_factory=list)
    mixture: dict[str, Any] = field(default_factory=dict)  # shares per source after mixing (data/mixing.py)
    clean: dict[str, Any] = field(default_factory=dict)  # the cleaning pass (data.clean): clean/report.py CleanReport
    examples_removed: list[dict] = field(default_factory=list)  # first few removed records (origin, reason)
    template: str = ""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    reasoning: str = ""
    tool_format: str = ""
    mask: str = ""
    max_seq_len: int | None = None
    truncation: str = ""
    from_cache: bool = False
    cache_key: str | None = None
    elapsed_s: float = 0.0

    @property
    def removed(self) -> int:
        return sum(self.skipped.values()) + self.dropped_empty_mask + self.dropped_too_long

    def check(self) -> None:
        if self.records_in != self.records_kept + self.removed:
            raise AssertionError(
                f"data report does not add up: {self.records_in} in != {self.records_kept} kept + "
                f"{self.removed} removed"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}  # a report written by another version
        data["per_source"] = {k: SourceReport(**v) for k, v in data.get("per_source", {}).items()}
        return cls(**data)

    def summary_line(self) -> str:
        """One line: counts, lengths, trained share."""
        removed = ", ".join(f"{k} {v}" for k, v in sorted(self.removed_by_reason().items()) if v) or "none"
        return (
            f"records {self.records_in:,} in, {self.records_kept:,} kept (removed: {removed}); truncated "
            f"{self.truncated:,}; length min/median/p95/max {self.length_min}/{self.length_median:g}/"
            f"{self.length_p95:g}/{self.length_max}; tokens {self.total_tokens:,}, "
            f"trained {self.trained_tokens:,} "
            f"({100 * self.trained_share:.1f}%)"
        )

    def removed_by_reason(self) -> dict[str, int]:
        return {**self.skipped, "empty_mask": self.dropped_empty_mask, "too_long": self.dropped_too_long}

    def format(self) -> str:
        """Plain-text summary (several lines) for logs and non-terminal output."""
        lines = [self.summary_line()]
        kwargs = f" {self.chat_template_kwargs}" if self.chat_template_kwargs else ""
        lines.append(
            f"template: {self.template}{kwargs}; mask: {self.mask}; max_seq_len: {self.max_seq_len} "
            f"({self.truncation}){'; from cache' if self.from_cache else ''}"
        )
        if self.reasoning_rendered or self.reasoning_dropped:
            inline = f" ({self.reasoning_inline:,} written inline)" if self.reasoning_inline else ""
            lines.append(
                f"reasoning ({self.reasoning}): {self.reasoning_rendered:,} traces rendered{inline}, "
                f"{self.reasoning_dropped:,} left out by the template"
            )
        if len(self.per_source) > 1:
            for s in self.per_source.values():
                lines.append(
                    f"  {s.name} ({s.format}): {s.records_in:,} in, {s.records_kept:,} kept, "
                    f"{s.total_tokens:,} tokens, {s.trained_tokens:,} trained"
                )
        if self.mixture and len(self.mixture.get("sources", {})) > 1:
            from sftlab.data.mixing import format_mixture

            lines.append(format_mixture(self.mixture))
        for ex in self.examples_removed[:5]:
            lines.append(f"  removed ({ex['reason']}) {ex['error']}")
        if self.eot_warning:
            lines.append(f"WARNING: {self.eot_warning}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def summary_table(self):
        """A ``rich`` table of the same numbers (for terminals)."""
        from rich.table import Table

        table = Table(title="data summary", show_header=True)
        for col in ("source", "format", "in", "kept", "removed", "truncated", "tokens", "trained"):
            table.add_column(col, justify="left" if col in ("source", "format") else "right")
        for s in self.per_source.values():
            removed = s.records_in - s.records_kept
            table.add_row(
                s.name,
                s.format,
                f"{s.records_in:,}",
                f"{s.records_kept:,}",
                f"{removed:,}",
                f"{s.truncated:,}",
                f"{s.total_tokens:,}",
                f"{s.trained_tokens:,}",
            )
        table.caption = (
            f"length min/median/p95/max {self.length_min}/{self.length_median:g}/{self.length_p95:g}/"
            f"{self.length_max} · trained share {100 * self.trained_share:.1f}%"
        )
        return table


def source_report(name: str, path: str, fmt: str, cols: dict[str, list]) -> SourceReport:
    """Counts of one source from its per-record columns ``_status`` ("" = kept, else the reason),
    ``_truncated``, ``length``, ``num_trained``."""
    report = SourceReport(name, path, fmt, records_in=len(cols["_status"]))
    for i, status in enumerate(cols["_status"]):
        if not status:
            report.records_kept += 1
            report.truncated += cols["_truncated"][i]
            report.total_tokens += cols["length"][i]
            report.trained_tokens += cols["num_trained"][i]
        elif status == "empty_mask":
            report.dropped_empty_mask += 1
        elif status == "too_long":
            report.dropped_too_long += 1
        else:
            report.skipped[status] = report.skipped.get(status, 0) + 1
    return report


def add_source(report: DataReport, s: SourceReport) -> None:
    """Add one source's counts to the dataset report."""
    report.per_source[s.name] = s
    report.records_in += s.records_in
    report.records_kept += s.records_kept
    for k, v in s.skipped.items():
        report.skipped[k] = report.skipped.get(k, 0) + v
    report.dropped_empty_mask += s.dropped_empty_mask
    report.dropped_too_long += s.dropped_too_long
    report.truncated += s.truncated


def bin_edges(max_value: int, bins: int = 20) -> list[int]:
    """Integer edges ``0, w, 2w, ...`` covering ``max_value`` with at most ``bins`` bins of a whole width.

    >>> bin_edges(100, bins=4)
    [0, 26, 52, 78, 104]
    """
    width = max(1, math.ceil((max_value + 1) / bins))
    return [i * width for i in range(math.ceil((max_value + 1) / width) + 1)]


def length_histograms(lengths, trained, sources, bins: int = 20) -> dict[str, Any]:
    """Histograms of tokens and of trained tokens per record, one count list per source.

    A value v falls in bin i when ``edges[i] <= v < edges[i + 1]``.

    >>> h = length_histograms([3, 9, 10], [1, 2, 2], ["a", "b", "b"], bins=2)
    >>> h["length_edges"], h["length_counts"]
    ([0, 6, 12], {'a': [1, 0], 'b': [0, 2]})
    """
    lengths, trained = np.asarray(lengths, dtype=np.int64), np.asarray(trained, dtype=np.int64)
    sources = np.asarray([str(s) for s in sources])
    out: dict[str, Any] = {}
    for key, values in (("length", lengths), ("trained", trained)):
        edges = bin_edges(int(values.max()) if len(values) else 0, bins)
        counts = {}
        for name in dict.fromkeys(sources.tolist()):
            idx = np.minimum(values[sources == name] // (edges[1] - edges[0]), len(edges) - 2)
            counts[name] = np.bincount(idx, minlength=len(edges) - 1).astype(int).tolist()
        out[f"{key}_edges"], out[f"{key}_counts"] = edges, counts
    return out


# What to do about records removed for a reason (the console warning of a large share removed).
REMOVAL_FIXES = {
    "template_error": "the chat template cannot render them, or their loss spans cannot be proven; the first ones are "
    "named below, and sftlab template check TOKENIZER --data FILE shows what the template supports",
    "too_long": "longer than data.max_seq_len with truncation: drop; raise data.max_seq_len or set data.truncation: split",
    "empty_mask": "nothing left to train (a reply cut off by data.max_seq_len loses its end of turn, or the mask "
    "selects no token); raise data.max_seq_len, set data.truncation: split, or check data.mask",
    # data.clean removes records on purpose: the hint says which setting did it
    "exact_duplicate": "data.clean.dedup.exact found them equal to a kept record; dedup.exact: none keeps them",
    "near_duplicate": "data.clean.dedup.near found them similar to a kept record (records sharing a long passage are "
    "near duplicates); raise dedup.threshold, use dedup.near: prompt, or dedup.near: none",
    "contaminated": "data.clean.decontaminate found eval items in them",
    "not_selected": "data.clean.select kept its budget / share of the best-ranked records",
    "ifd_above_max": "data.clean.select: IFD above max_ifd (the prompt does not help predict the reply)",
    "too_similar": "data.clean.select.diversity: too close to an already selected record",
    "unscorable": "data.clean.select: the reply has no token to score",
}


def removal_warnings(report: DataReport, share: float, skipped_path: str | None = None) -> list[str]:
    """Console lines when more than ``share`` of the records were removed: per reason, with the fix."""
    removed = {k: v for k, v in sorted(report.removed_by_reason().items(), key=lambda kv: -kv[1]) if v}
    total = sum(removed.values())
    if not report.records_in or total <= share * report.records_in:
        return []
    where = f"each one is in {skipped_path}" if skipped_path else "see the removed records"
    lines = [f"{total:,} of {report.records_in:,} records ({100 * total / report.records_in:.1f}%) were removed "
             f"before training ({where}):"]
    for reason, n in removed.items():
        lines.append(f"  {reason}: {n:,} ({REMOVAL_FIXES.get(reason, 'the records fail validation; fix or drop them')})")
    return lines
