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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sftlab.config import CleanConfig, SourceConfig, to_dict
from sftlab.data.clean.decontaminate import EvalSet, decontaminate, load_eval_set
from sftlab.data.clean.dedup import exact_duplicates, near_duplicates
from sftlab.data.clean.filters import check_language_support, check_record
from sftlab.data.clean.records import Records, load_records
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

    def kept(self) -> list[int]:
        return [i for i in range(len(self.records)) if i not in self.removed]

    def drops_by_source(self) -> dict[str, dict[int, dict[str, Any]]]:
        """``{source: {row: removal}}`` of the records this pass removed (invalid records not included)."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for i, info in self.removed.items():
            out.setdefault(self.records.sources[i], {})[self.records.rows[i]] = info
        return out


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


def clean_records(
    records: Records,
    cfg: CleanConfig,
    eval_sets: list[EvalSet] | None = None,
    scoring_model=None,
    progress: bool = False,
) -> CleanResult:
    """Run the configured operators; ``scoring_model`` is ``(model, tokenizer)`` for selection by IFD or
    with diversity (loaded from ``cfg.select.model`` when not given)."""
    n = len(records)
    result = CleanResult(records)
    report = result.report
    report.config = to_dict(cfg)
    for name, count in records.records_in().items():
        report.per_source[name] = SourceCleanReport(name, records_in=count)
    for inv in records.invalid:
        report.count(inv.source, "validate", inv.reason)
    keep = np.ones(n, dtype=bool)
    vocab = Vocab()
    views: dict[str, Any] = {}

    def words(view: str):
        if view not in views:
            texts = records.prompts if view == "prompt" else records.conversations()
            views[view] = encode_texts(texts, vocab)
        return views[view]

    def remove(i: int, operator: str, reason: str, error: str, **extra) -> None:
        keep[i] = False
        info = {"operator": operator, "reason": reason, "error": error, **extra}
        result.removed[i] = info
        report.count(records.sources[i], operator, reason)
        examples = report.examples.setdefault(operator, [])
        if len(examples) < EXAMPLES_PER_OPERATOR:
            examples.append({"id": records.ids[i], "source": records.sources[i], **info})

    def timed(operator: str):
        start = time.perf_counter()
        return lambda: report.timings_s.__setitem__(operator, round(time.perf_counter() - start, 3))

    bars = _Progress(progress)
    with bars.running():
        if cfg.filter.enabled:
            check_language_support(cfg.filter)
            done = timed("filter")
            advance = bars.task("clean: filters", n)
            for i, (p, r) in enumerate(zip(records.prompts, records.responses)):
                hit = check_record(p, r, cfg.filter)
                if hit is not None:
                    remove(i, "filter", hit.reason, hit.detail)
                if advance and i % 1000 == 999:
                    advance(1000)
            done()

        if cfg.dedup.exact != "none":
            done = timed("exact_dedup")
            view = cfg.dedup.exact
            sizes: dict[int, int] = {}
            for i, j in exact_duplicates(words(view), keep, skip_empty=view == "prompt").items():
                remove(i, "exact_dedup", "exact_duplicate", f"same {view} as {records.ids[j]}",
                       duplicate_of=records.ids[j], duplicate_of_source=records.sources[j])  # fmt: skip
                sizes[j] = sizes.get(j, 1) + 1
            report.duplicate_clusters["exact"] = _size_histogram(sizes)
            done()

        if cfg.dedup.near != "none":
            done = timed("near_dedup")
            d = cfg.dedup
            view_words = words(d.near)
            advance = bars.task("clean: near duplicates (MinHash)", int((keep & (view_words.lengths > 0)).sum()))
            near = near_duplicates(view_words, keep, d.shingle_words, d.bands, d.rows, d.threshold, d.seed, advance)
            for i, j in sorted(near.duplicate_of.items()):
                remove(i, "near_dedup", "near_duplicate",
                       f"{d.near} {near.similarity[i]:.2f} similar (Jaccard of {d.shingle_words}-word shingles) to "
                       f"{records.ids[j]}", duplicate_of=records.ids[j], duplicate_of_source=records.sources[j],
                       similarity=near.similarity[i])  # fmt: skip
            report.duplicate_clusters["near"] = near.cluster_sizes
            report.near_dedup = {"candidate_pairs": near.candidate_pairs, "verified_pairs": near.verified_pairs}
            done()

        if eval_sets:
            done = timed("decontaminate")
            found, set_reports = decontaminate(words("conversation"), keep, eval_sets, vocab, cfg.decontaminate)
            for i, c in sorted(found.items()):
                how = f"shares a {cfg.decontaminate.long_ngram}-gram" if c.long_match else ""
                cov = f"holds {c.coverage:.0%} of its {cfg.decontaminate.ngram}-grams"
                remove(i, "decontaminate", "contaminated",
                       f"contains eval item {c.item} of {c.eval_set} ({' and '.join(x for x in (how, cov) if x)})",
                       eval_set=c.eval_set, eval_item=c.item, coverage=c.coverage)  # fmt: skip
            report.contamination = [vars(r) for r in set_reports]
            for r, rep in zip(set_reports, report.contamination):
                rep["examples"] = [
                    {"id": records.ids[i], "eval_item": c.item, "coverage": c.coverage}
                    for i, c in sorted(found.items())
                    if c.eval_set == r.name
                ][:EXAMPLES_PER_OPERATOR]
            done()

        if cfg.select.by != "none":
            done = timed("select")
            _select(records, cfg, keep, remove, report, scoring_model, bars)
            done()

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
    return result


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
    """Load every source, run the pass over all of them; see ``clean_records``."""
    eval_sets = load_eval_sets(cfg, hf_cache)
    bars = _Progress(progress)
    with bars.running():
        advance = bars.task("clean: reading records", None)
        records = load_records(sources, names, hf_cache, mask, advance)
    return clean_records(records, cfg, eval_sets, scoring_model, progress)


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
