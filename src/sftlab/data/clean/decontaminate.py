"""Decontamination: remove training records that contain evaluation items.

A training record is contaminated by an eval item when it holds more than ``coverage`` of the item's
distinct word ``ngram``-grams (8-grams, 0.5: the item is mostly in the record), or when the two share one
word ``long_ngram``-gram (13 words in a row: the overlap test of GPT-3, Brown et al. 2020, appendix C).
Words are normalised (text.py), so case, whitespace and punctuation do not hide a copy.

An eval item's text is the concatenation of its string fields (all, or ``fields``); items shorter than
``ngram`` words cannot be checked by coverage and are counted as too short.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sftlab.config import DecontaminateConfig, EvalSetConfig, SourceConfig
from sftlab.data.clean.text import Vocab, WordIds, encode_texts, ngram_hashes, word_chunks
from sftlab.data.errors import MISSING_FIELD, DataError
from sftlab.data.sources import load_source, read_row, source_name


@dataclass
class EvalSet:
    name: str
    path: str
    ids: list[str]  # origin of each item
    texts: list[str]


@dataclass
class Contamination:
    eval_set: str
    item: str  # id (origin) of the eval item
    coverage: float  # share of the item's n-grams found in the record
    long_match: bool  # shares a long_ngram-gram


@dataclass
class EvalSetReport:
    name: str
    path: str
    items: int = 0
    items_too_short: int = 0  # fewer words than the coverage n-gram
    items_hit: int = 0  # eval items found in at least one training record
    records_removed: int = 0  # training records removed for this set (the set of their strongest hit)
    examples: list[dict] = field(default_factory=list)  # a few (record, item, coverage) pairs


def item_text(row: dict, fields: tuple[str, ...], origin: str) -> str:
    """Text of an eval record: the given fields, else every string value (lists and dicts included).

    >>> item_text({"id": 3, "question": "Why?", "answers": {"text": ["Because."]}}, (), "x:1")
    'Why?\\nBecause.'
    """
    if fields:
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(
                f"missing (the record has: {', '.join(sorted(row))})",
                reason=MISSING_FIELD,
                field=", ".join(missing),
                origin=origin,
                fix="correct data.clean.decontaminate.eval_sets[].fields",
            )
        values = [row[f] for f in fields]
    else:
        values = list(row.values())
    out: list[str] = []

    def collect(v) -> None:
        if isinstance(v, str):
            if v.strip():
                out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                collect(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x)

    for v in values:
        collect(v)
    return "\n".join(out)


def load_eval_set(cfg: EvalSetConfig, hf_cache: str | None = None) -> EvalSet:
    """Every item of an eval data file (unreadable records are errors: an eval set must be whole)."""
    src = SourceConfig(path=cfg.path, name=cfg.name, split=cfg.split)
    name = source_name(src)
    loaded = load_source(replace(src, name=name), hf_cache)
    ids, texts = [], []
    ds = loaded.dataset
    for start in range(0, len(ds), 1000):
        batch = ds[start : start + 1000]
        for i in range(len(next(iter(batch.values())))):
            origin = batch["_origin"][i] if loaded.kind == "json" else loaded.origin(start + i)
            row = read_row(loaded, batch, i, origin)
            ids.append(origin)
            texts.append(item_text(row, cfg.fields, origin))
    return EvalSet(name, cfg.path, ids, texts)


def _unique_pairs(hashes: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (owner, hash) pairs, sorted by hash."""
    order = np.lexsort((owner, hashes))
    h, o = hashes[order], owner[order]
    keep = np.ones(len(h), dtype=bool)
    keep[1:] = (h[1:] != h[:-1]) | (o[1:] != o[:-1])
    return h[keep], o[keep]


def _match(train_h, train_o, eval_h, eval_o, chunk: int = 1 << 20):
    """All (train record, eval item) pairs sharing an n-gram, one row per shared distinct n-gram."""
    rec_parts, item_parts = [], []
    for start in range(0, len(train_h), chunk):
        th, to = train_h[start : start + chunk], train_o[start : start + chunk]
        lo = np.searchsorted(eval_h, th, side="left")
        hi = np.searchsorted(eval_h, th, side="right")
        count = hi - lo
        hit = count > 0
        if not hit.any():
            continue
        lo, count, to = lo[hit], count[hit], to[hit]
        pos = np.repeat(lo - np.concatenate(([0], np.cumsum(count)[:-1])), count) + np.arange(count.sum())
        rec_parts.append(np.repeat(to, count))
        item_parts.append(eval_o[pos])
    if not rec_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rec_parts), np.concatenate(item_parts)


def _train_ngrams(part: WordIds, first: int, keep: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (hash, record) n-gram pairs of the kept records of a chunk (records numbered globally)."""
    hashes, owner = ngram_hashes(part, n, short=False)
    owner = owner + first
    alive = keep[owner]
    return _unique_pairs(hashes[alive], owner[alive])


def find_contamination(
    train: WordIds, keep: np.ndarray, items: WordIds, cfg: DecontaminateConfig, chunk_words: int = 1 << 21
) -> tuple[dict[int, tuple[int, float, bool]], np.ndarray, np.ndarray]:
    """``({record: (item, coverage, long match)}, item n-gram counts, items hit)`` over records with ``keep``.

    For each contaminated record the strongest hit is given (a long match first, then the highest
    coverage). ``items hit`` is a bool per eval item. Training records are processed in chunks.
    """
    n_items = len(items)
    hit_items = np.zeros(n_items, dtype=bool)
    eh, eo = _unique_pairs(*ngram_hashes(items, cfg.ngram, short=False))
    item_ngrams = np.bincount(eo, minlength=n_items)
    long_eh, long_eo = (
        _unique_pairs(*ngram_hashes(items, cfg.long_ngram, short=False)) if cfg.long_ngram > 0 else (None, None)
    )
    best: dict[int, tuple[int, float, bool]] = {}
    for first, part in word_chunks(train, chunk_words):
        rec, item = _match(*_train_ngrams(part, first, keep, cfg.ngram), eh, eo)
        coverage: dict[int, float] = {}  # record * n_items + item -> coverage, for pairs sharing an n-gram
        if len(rec):
            key, shared = np.unique(rec * n_items + item, return_counts=True)
            rec_u, item_u = key // n_items, key % n_items
            cov = shared / np.maximum(item_ngrams[item_u], 1)
            coverage = dict(zip(key.tolist(), cov.tolist()))
            over = cov > cfg.coverage
            for r, it, c in zip(rec_u[over].tolist(), item_u[over].tolist(), cov[over].tolist()):
                if r not in best or c > best[r][1]:
                    best[r] = (it, c, False)
            hit_items[item_u[over]] = True
        if long_eh is None:
            continue
        rec, item = _match(*_train_ngrams(part, first, keep, cfg.long_ngram), long_eh, long_eo)
        if len(rec):
            key = np.unique(rec * n_items + item)
            rec_u, item_u = key // n_items, key % n_items
            for k, r, it in zip(key.tolist(), rec_u.tolist(), item_u.tolist()):
                c = coverage.get(k, 0.0)
                if r not in best or not best[r][2] or c > best[r][1]:
                    best[r] = (it, c, True)
            hit_items[item_u] = True
    return best, item_ngrams, hit_items


def decontaminate(
    train: WordIds, keep: np.ndarray, eval_sets: list[EvalSet], vocab: Vocab, cfg: DecontaminateConfig
) -> tuple[dict[int, Contamination], list[EvalSetReport]]:
    """Contaminated records (among ``keep``) and a report per eval set; each eval set is checked in turn,
    and a record removed for one set is not counted again for the next."""
    keep = keep.copy()
    removed: dict[int, Contamination] = {}
    reports = []
    for es in eval_sets:
        words = encode_texts(es.texts, vocab)
        found, item_ngrams, hit_items = find_contamination(train, keep, words, cfg)
        rep = EvalSetReport(es.name, es.path, items=len(es.texts))
        rep.items_too_short = int((words.lengths < cfg.ngram).sum())
        rep.items_hit = int(hit_items.sum())
        for r, (it, cov, long_match) in sorted(found.items()):
            removed[r] = Contamination(es.name, es.ids[it], round(cov, 4), long_match)
            keep[r] = False
            rep.records_removed += 1
        reports.append(rep)
    return removed, reports
