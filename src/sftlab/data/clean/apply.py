"""The cleaning pass: operators in a fixed order over the records of all sources, each removal counted.

Order: filters -> exact duplicates -> near duplicates -> decontamination -> selection. Each operator sees
only the records the ones before it kept; duplicates are found across sources (the first record in
source order, then row order, is kept); selection is per source (mixing decides the shares between
sources afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sftlab.config import CleanConfig, SourceConfig, to_dict
from sftlab.data.clean.decontaminate import EvalSet, decontaminate, load_eval_set
from sftlab.data.clean.dedup import exact_duplicates, near_duplicates
from sftlab.data.clean.filters import check_language_support, check_record
from sftlab.data.clean.records import ConvertedSource, Records, convert_source, records_of
from sftlab.data.clean.report import CleanReport, SourceCleanReport, length_histogram
from sftlab.data.clean.select import (
    budget_of,
    length_matched_order,
    load_scoring_model,
    score_records,
    select_greedy,
)
from sftlab.data.clean.text import Vocab, encode_texts
from sftlab.data.errors import DataError

EXAMPLES_PER_OPERATOR = 5


@dataclass
class CleanResult:
    records: Records
    removed: dict[int, dict[str, Any]] = field(default_factory=dict)  # record index -> operator, reason, ...
    report: CleanReport = field(default_factory=CleanReport)
    keep: np.ndarray | None = None  # per record: kept by every operator
    sources: list[ConvertedSource] = field(default_factory=list)  # what the records were made from

    def kept(self) -> list[int]:
        return [i for i in range(len(self.records)) if i not in self.removed]

    def to_encode(self) -> dict[str, ConvertedSource]:
        """Per source name, its converted source with each removed row's conversation replaced by the removal
        (a dict: operator, reason, error, ...): what the data pipeline encodes."""
        removed_at = {(self.records.sources[i], self.records.rows[i]): info for i, info in self.removed.items()}
        return {
            cs.src.name: replace(
                cs, conversations=[removed_at.get((cs.src.name, row), c) for row, c in enumerate(cs.conversations)]
            )
            for cs in self.sources
        }


class _Progress:
    """Rich progress bars (or nothing): ``task(description, total)`` returns an ``advance(n)`` callable."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )

    def task(self, description: str, total: int | None) -> Callable[[int], None] | None:
        if self.bar is None:
            return None
        task_id = self.bar.add_task(description, total=total)
        return lambda n: self.bar.advance(task_id, n)

    @contextmanager
    def running(self):
        if self.bar is None:
            yield self
        else:
            with self.bar:
                yield self


class _Pass:
    """The state of one cleaning pass: the keep mask, the removals and the report, word views made once."""

    def __init__(self, records: Records, cfg: CleanConfig, progress: bool) -> None:
        self.records, self.cfg, self.bars = records, cfg, _Progress(progress)
        self.result = CleanResult(records, keep=np.ones(len(records), dtype=bool))
        self.keep, self.report = self.result.keep, self.result.report
        self.vocab, self.views = Vocab(), {}

    def words(self, view: str):
        if view not in self.views:
            texts = self.records.prompts if view == "prompt" else self.records.conversations()
            self.views[view] = encode_texts(texts, self.vocab)
        return self.views[view]

    def remove(self, i: int, operator: str, reason: str, error: str, **extra) -> None:
        self.keep[i] = False
        info = {"operator": operator, "reason": reason, "error": error, **extra}
        self.result.removed[i] = info
        self.report.count(self.records.sources[i], operator, reason)
        examples = self.report.examples.setdefault(operator, [])
        if len(examples) < EXAMPLES_PER_OPERATOR:
            examples.append({"id": self.records.ids[i], "source": self.records.sources[i], **info})

    @contextmanager
    def timed(self, operator: str):
        start = time.perf_counter()
        yield
        self.report.timings_s[operator] = round(time.perf_counter() - start, 3)


def clean_records(
    records: Records,
    cfg: CleanConfig,
    eval_sets: list[EvalSet] | None = None,
    scoring_model=None,
    progress: bool = False,
) -> CleanResult:
    """Run the configured operators; ``scoring_model`` is ``(model, tokenizer)`` for selection by IFD or
    with diversity (loaded from ``cfg.select.model`` when not given). The result: ``keep`` (per record),
    ``removed`` (record -> operator, reason, error) and the report."""
    p = _Pass(records, cfg, progress)
    p.report.config = to_dict(cfg)
    for name, count in records.records_in().items():
        p.report.per_source[name] = SourceCleanReport(name, records_in=count)
    for inv in records.invalid:
        p.report.count(inv.source, "validate", inv.reason)
    with p.bars.running():
        if cfg.filter.enabled:
            with p.timed("filter"):
                _filter(p)
        if cfg.dedup.exact != "none":
            with p.timed("exact_dedup"):
                _exact_dedup(p)
        if cfg.dedup.near != "none":
            with p.timed("near_dedup"):
                _near_dedup(p)
        if eval_sets:
            with p.timed("decontaminate"):
                _decontaminate(p, eval_sets)
        if cfg.select.by != "none":
            with p.timed("select"):
                _select(records, cfg, p.keep, p.remove, p.report, scoring_model, p.bars)
    _count_kept(records, p.keep, p.report)
    return p.result


def _filter(p: _Pass) -> None:
    check_language_support(p.cfg.filter)
    advance = p.bars.task("clean: filters", len(p.records))
    for i, (prompt, response) in enumerate(zip(p.records.prompts, p.records.responses)):
        hit = check_record(prompt, response, p.cfg.filter)
        if hit is not None:
            p.remove(i, "filter", hit.reason, hit.detail)
        if advance and i % 1000 == 999:
            advance(1000)


def _exact_dedup(p: _Pass) -> None:
    view, ids, sources = p.cfg.dedup.exact, p.records.ids, p.records.sources
    sizes: dict[int, int] = {}
    for i, j in exact_duplicates(p.words(view), p.keep, skip_empty=view == "prompt").items():
        p.remove(i, "exact_dedup", "exact_duplicate", f"same {view} as {ids[j]}", duplicate_of=ids[j],
                 duplicate_of_source=sources[j])  # fmt: skip
        sizes[j] = sizes.get(j, 1) + 1
    p.report.duplicate_clusters["exact"] = _size_histogram(sizes)


def _near_dedup(p: _Pass) -> None:
    d, ids, sources = p.cfg.dedup, p.records.ids, p.records.sources
    view_words = p.words(d.near)
    advance = p.bars.task("clean: near duplicates (MinHash)", int((p.keep & (view_words.lengths > 0)).sum()))
    near = near_duplicates(view_words, p.keep, d.shingle_words, d.bands, d.rows, d.threshold, d.seed, advance)
    for i, j in sorted(near.duplicate_of.items()):
        p.remove(i, "near_dedup", "near_duplicate",
                 f"{d.near} {near.similarity[i]:.2f} similar (Jaccard of {d.shingle_words}-word shingles) to "
                 f"{ids[j]}", duplicate_of=ids[j], duplicate_of_source=sources[j],
                 similarity=near.similarity[i])  # fmt: skip
    p.report.duplicate_clusters["near"] = near.cluster_sizes
    p.report.near_dedup = {"candidate_pairs": near.candidate_pairs, "verified_pairs": near.verified_pairs}


def _decontaminate(p: _Pass, eval_sets: list[EvalSet]) -> None:
    dc = p.cfg.decontaminate
    found, set_reports = decontaminate(p.words("conversation"), p.keep, eval_sets, p.vocab, dc)
    for i, c in sorted(found.items()):
        how = f"shares a {dc.long_ngram}-gram" if c.long_match else ""
        cov = f"holds {c.coverage:.0%} of its {dc.ngram}-grams"
        p.remove(i, "decontaminate", "contaminated",
                 f"contains eval item {c.item} of {c.eval_set} ({' and '.join(x for x in (how, cov) if x)})",
                 eval_set=c.eval_set, eval_item=c.item, coverage=c.coverage)  # fmt: skip
    p.report.contamination = [vars(r) for r in set_reports]
    for r, rep in zip(set_reports, p.report.contamination):
        rep["examples"] = [
            {"id": p.records.ids[i], "eval_item": c.item, "coverage": c.coverage}
            for i, c in sorted(found.items())
            if c.eval_set == r.name
        ][:EXAMPLES_PER_OPERATOR]


def _count_kept(records: Records, keep: np.ndarray, report: CleanReport) -> None:
    """Kept records and response-length histograms per source, and the totals (checked to add up)."""
    code = {name: k for k, name in enumerate(report.per_source)}
    source_of = np.array([code[name] for name in records.sources], dtype=np.int64)
    response_words = np.array([len(r.split()) for r in records.responses], dtype=np.int64)
    for name, s in report.per_source.items():
        mine = source_of == code[name]
        s.records_kept = int((keep & mine).sum())
        s.response_words_in = length_histogram(response_words[mine])
        s.response_words_kept = length_histogram(response_words[keep & mine])
    report.records_in = sum(s.records_in for s in report.per_source.values())
    report.records_kept = sum(s.records_kept for s in report.per_source.values())
    report.check()


def _size_histogram(cluster_sizes: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for size in cluster_sizes.values():
        out[size] = out.get(size, 0) + 1
    return out


def _select(records: Records, cfg: CleanConfig, keep, remove, report: CleanReport, scoring_model, bars) -> None:
    sel = cfg.select
    by_source: dict[str, list[int]] = {}
    for i in np.flatnonzero(keep).tolist():
        by_source.setdefault(records.sources[i], []).append(i)
    budgets = {name: budget_of(sel, len(idx)) for name, idx in by_source.items()}
    need_model = sel.by in ("ifd", "length_matched") or sel.diversity is not None
    scores = None
    candidates = [i for idx in by_source.values() for i in idx]
    if need_model and candidates:
        if scoring_model is None:
            if not sel.model:
                raise DataError(
                    f"selection by {sel.by}{' with diversity' if sel.diversity is not None else ''} needs a base model",
                    field="data.clean.select.model",
                    fix="set data.clean.select.model to the base model folder (sftlab train uses model.name_or_path)",
                )
            scoring_model = load_scoring_model(sel.model)
        model, tokenizer = scoring_model
        advance = bars.task("clean: scoring with the base model", len(candidates))
        scores = score_records(
            model,
            tokenizer,
            [records.prompts[i] for i in candidates],
            [records.responses[i] for i in candidates],
            sel.max_seq_len,
            sel.batch_size,
            embeddings=sel.diversity is not None,
            progress=advance,
        )
    pos = {i: k for k, i in enumerate(candidates)}
    stats: dict[str, Any] = {"by": sel.by, "per_source": {}}
    selected_ifd, all_ifd = [], []
    for s_index, (name, idx) in enumerate(by_source.items()):
        if sel.by == "length_matched":  # random records with the lengths of the IFD selection
            ifd = scores.ifd[[pos[i] for i in idx]]
            ok = [(i, v) for i, v in zip(idx, ifd.tolist()) if np.isfinite(v) and v <= sel.max_ifd]  # as ifd keeps
            by_ifd = [i for i, _ in sorted(ok, key=lambda t: (-t[1], t[0]))]
            lengths = {i: len(records.responses[i].split()) for i in idx}
            order = length_matched_order(idx, by_ifd[: budgets[name]], lengths, sel.seed + s_index)
        elif sel.by == "ifd":
            ifd = scores.ifd[[pos[i] for i in idx]]
            all_ifd += ifd[np.isfinite(ifd)].tolist()
            ok = []
            for i, v in zip(idx, ifd.tolist()):
                if not np.isfinite(v):
                    remove(i, "select", "unscorable", "the response has no token to score")
                elif v > sel.max_ifd:
                    remove(i, "select", "ifd_above_max", f"IFD {v:.3f} > max_ifd {sel.max_ifd}", ifd=round(v, 4))
                else:
                    ok.append((i, v))
            order = [i for i, _ in sorted(ok, key=lambda t: (-t[1], t[0]))]
        elif sel.by == "length":
            order = sorted(idx, key=lambda i: (-len(records.responses[i].split()), i))
        else:
            rng = np.random.default_rng(sel.seed + s_index)
            order = [idx[k] for k in rng.permutation(len(idx)).tolist()]
        budget = min(budgets[name], len(order))
        emb = None if scores is None or scores.embeddings is None else scores.embeddings
        if emb is not None:
            local = np.stack([emb[pos[i]] for i in order]) if order else np.zeros((0, emb.shape[1]), np.float32)
            chosen, skipped = select_greedy(list(range(len(order))), budget, local, sel.diversity)
            chosen, skipped = [order[k] for k in chosen], [order[k] for k in skipped]
        else:
            chosen, skipped = select_greedy(order, budget)
        for i in skipped:
            remove(i, "select", "too_similar", f"cosine to a selected record > diversity {sel.diversity}")
        chosen_set = set(chosen)
        rank = {i: r for r, i in enumerate(order)}
        for i in order:
            if i not in chosen_set and keep[i]:
                extra = {"ifd": round(float(scores.ifd[pos[i]]), 4)} if sel.by == "ifd" else {}
                remove(i, "select", "not_selected", f"rank {rank[i] + 1} of {len(order)} by {sel.by}, budget {budget}",
                       **extra)  # fmt: skip
        if sel.by == "ifd":
            selected_ifd += [float(scores.ifd[pos[i]]) for i in chosen]
        stats["per_source"][name] = {"candidates": len(idx), "budget": budgets[name], "selected": len(chosen)}
    if sel.by == "ifd" and all_ifd:
        stats["ifd_mean_all"] = round(float(np.mean(all_ifd)), 4)
        stats["ifd_above_max"] = int(sum(v > sel.max_ifd for v in all_ifd))
        if selected_ifd:
            stats["ifd_mean_selected"] = round(float(np.mean(selected_ifd)), 4)
            stats["ifd_min_selected"] = round(float(np.min(selected_ifd)), 4)
    report.selection = stats


def load_eval_sets(cfg: CleanConfig, hf_cache: str | None = None) -> list[EvalSet]:
    return [load_eval_set(es, hf_cache) for es in cfg.decontaminate.eval_sets]


def clean_sources(
    sources: tuple[SourceConfig, ...],
    names: list[str],
    cfg: CleanConfig,
    hf_cache: str | None = None,
    mask: str = "auto",
    progress: bool = False,
    scoring_model=None,
) -> CleanResult:
    """Read and convert every source once, run the pass over all of them; see ``clean_records``. The result
    holds the converted sources (``to_encode``: what the data pipeline encodes)."""
    eval_sets = load_eval_sets(cfg, hf_cache)
    bars = _Progress(progress)
    with bars.running():
        advance = bars.task("clean: reading records", None)
        converted = [convert_source(src, name, hf_cache, mask, advance) for src, name in zip(sources, names)]
    result = clean_records(records_of(converted), cfg, eval_sets, scoring_model, progress)
    result.sources = converted
    return result


def clean_fingerprint(cfg: CleanConfig, hf_cache: str | None = None) -> dict[str, Any]:
    """What the result of the pass depends on besides the sources: settings, eval set contents, base model."""
    from pathlib import Path

    from sftlab.data.sources import source_fingerprint

    eval_sets = [
        source_fingerprint(SourceConfig(path=es.path, split=es.split), hf_cache) for es in cfg.decontaminate.eval_sets
    ]
    model = None
    if cfg.select.model and (cfg.select.by in ("ifd", "length_matched") or cfg.select.diversity is not None):
        folder = Path(cfg.select.model)
        files = sorted(folder.glob("*")) if folder.is_dir() else []
        model = [cfg.select.model] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return {"cfg": to_dict(cfg), "eval_sets": eval_sets, "model": model}
