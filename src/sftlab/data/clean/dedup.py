"""Exact and near duplicates.

- ``exact_duplicates``: equal normalised word sequences (case, whitespace and punctuation ignored).
- ``near_duplicates``: MinHash over word-n-gram shingles + LSH banding (Broder 1997; Leskovec et al.,
  Mining of Massive Datasets ch. 3), every candidate pair verified by the exact Jaccard similarity of its
  shingle sets, then union-find clusters; the first record of a cluster is kept.

Both return ``{index: index of the kept record it duplicates}``; ``keep`` (bool per record) says which
records take part (records already removed by an earlier operator do not). Vectorised with numpy: one
Python-level step per hash function and per band, never per record pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sftlab.data.clean.text import ShingleSets, WordIds, mix64, shingle_sets, text_fingerprints

_U64 = np.uint64


def exact_duplicates(words: WordIds, keep: np.ndarray, skip_empty: bool = False) -> dict[int, int]:
    """``{duplicate: first}`` over records with ``keep``; equal word-id sequences are duplicates.

    With ``skip_empty``, records without a word take no part (an empty prompt is no duplicate of another).
    Vectorised: 128-bit fingerprints of the word sequences (text.py), sorted, first of each group kept.
    """
    take = keep & (words.lengths > 0) if skip_empty else keep.copy()
    idx = np.flatnonzero(take)
    if len(idx) < 2:
        return {}
    fp = text_fingerprints(words)[idx]
    order = np.lexsort((idx, fp[:, 2], fp[:, 1], fp[:, 0]))  # by fingerprint, then index
    fp, idx = fp[order], idx[order]
    same = np.all(fp[1:] == fp[:-1], axis=1)
    new = np.concatenate(([True], ~same))
    first = idx[np.maximum.accumulate(np.where(new, np.arange(len(idx)), 0))]
    dup = ~new
    return dict(zip(idx[dup].tolist(), first[dup].tolist()))


@dataclass
class NearDupResult:
    duplicate_of: dict[int, int] = field(default_factory=dict)  # removed record -> kept record of its cluster
    similarity: dict[int, float] = field(default_factory=dict)  # removed record -> Jaccard of the pair found
    cluster_sizes: dict[int, int] = field(default_factory=dict)  # cluster size -> number of clusters (size >= 2)
    candidate_pairs: int = 0  # pairs sharing at least one band
    verified_pairs: int = 0  # of which Jaccard >= threshold


def minhash_band_keys(
    sets: ShingleSets,
    records: np.ndarray,
    bands: int,
    rows: int,
    seed: int = 0,
    chunk_shingles: int = 1 << 20,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(len(records), bands) uint32: one hash per band of each record's MinHash signature.

    Hash function ``k`` is multiply-add-shift on the 32-bit shingle (Dietzfelbinger 1996):
    ``(a_k * x + b_k) mod 2^64 >> 32`` with random 64-bit ``a_k`` (odd), ``b_k``; its minimum over a
    record's shingles is signature value ``k``. Every record in ``records`` needs >= 1 shingle.
    """
    rng = np.random.default_rng(seed)
    num = bands * rows
    a = rng.integers(1, 2**63, size=num, dtype=np.int64).astype(np.uint64) * _U64(2) + _U64(1)
    b = rng.integers(0, 2**63, size=num, dtype=np.int64).astype(np.uint64)
    out = np.empty((len(records), bands), dtype=np.uint32)
    sizes = sets.sizes[records]
    start = 0
    while start < len(records):
        # A chunk of records holding about chunk_shingles shingles (at least one record).
        cum = np.cumsum(sizes[start : start + (1 << 16)])
        stop = start + min(max(1, int(np.searchsorted(cum, chunk_shingles, side="right"))), 1 << 16)
        recs = records[start:stop]
        lo, hi = sets.offsets[recs], sets.offsets[recs + 1]
        lengths = hi - lo
        idx = np.repeat(lo - np.cumsum(np.concatenate(([0], lengths[:-1]))), lengths) + np.arange(lengths.sum())
        x = sets.values[idx].astype(np.uint64)
        seg = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        sig = np.empty((len(recs), num), dtype=np.uint32)
        tmp = np.empty_like(x)
        for k in range(num):
            np.multiply(x, a[k], out=tmp)
            tmp += b[k]
            tmp >>= _U64(32)
            sig[:, k] = np.minimum.reduceat(tmp, seg)
        key = sig[:, 0::rows].astype(np.uint64)
        for r in range(1, rows):
            key *= _U64(0x100000001B3)
            key += sig[:, r::rows]
        # 32 bits per band key: chance collisions add a few candidate pairs, which verification rejects
        out[start:stop] = mix64(key) >> _U64(32)
        if progress:
            progress(stop - start)
        start = stop
    return out


def candidate_pairs(keys: np.ndarray, records: np.ndarray) -> np.ndarray:
    """(pairs, 2) int64 ``(first, other)``, unique: records sharing a band key, each paired with the first
    (lowest index) record of that band bucket."""
    pairs = []
    for band in range(keys.shape[1]):
        col = keys[:, band]
        order = np.argsort(col, kind="stable")  # stable: within a bucket, records stay in index order
        sorted_keys = col[order]
        new = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        group_first = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        members = ~new
        if members.any():
            pairs.append(np.stack([records[order[group_first[members]]], records[order[members]]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    key = np.unique(allp[:, 0] * (int(records.max()) + 1) + allp[:, 1])
    return np.stack([key // (int(records.max()) + 1), key % (int(records.max()) + 1)], axis=1)


def jaccard_pairs(sets: ShingleSets, pairs: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair (vectorised, in chunks of ~``chunk`` values)."""
    out = np.empty(len(pairs), dtype=np.float64)
    sizes = sets.sizes
    start = 0
    while start < len(pairs):
        cum = np.cumsum(sizes[pairs[start:, 0]] + sizes[pairs[start:, 1]])
        stop = start + max(1, int(np.searchsorted(cum, chunk, side="right")))
        p = pairs[start:stop]
        la, lb = sizes[p[:, 0]], sizes[p[:, 1]]
        segs_lo = np.stack([sets.offsets[p[:, 0]], sets.offsets[p[:, 1]]], axis=1).ravel()
        segs_len = np.stack([la, lb], axis=1).ravel()
        idx = np.repeat(segs_lo - np.concatenate(([0], np.cumsum(segs_len)[:-1])), segs_len)
        idx += np.arange(segs_len.sum())
        tag = np.repeat(np.arange(len(p), dtype=np.uint64), la + lb)
        key = np.sort((tag << _U64(32)) | sets.values[idx].astype(np.uint64))
        dup = key[1:] == key[:-1]  # a value in both sets appears twice in a row
        inter = np.bincount((key[1:][dup] >> _U64(32)).astype(np.int64), minlength=len(p))
        union = la + lb - inter
        out[start:stop] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        start = stop
    return out


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the lowest index of its set."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicates(
    words: WordIds,
    keep: np.ndarray,
    shingle_words: int = 5,
    bands: int = 20,
    rows: int = 5,
    threshold: float = 0.7,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> NearDupResult:
    """Near-duplicate clusters among records with ``keep`` and at least one word.

    Two records are near duplicates when the Jaccard similarity of their word-``shingle_words``-gram sets
    is >= ``threshold``. LSH finds candidate pairs: a pair with similarity ``s`` shares at least one of
    ``bands`` bands of ``rows`` MinHash values with probability ``1 - (1 - s**rows) ** bands`` (20 x 5:
    0.99 at s = 0.7, 0.47 at s = 0.5); each candidate is then checked exactly, so there are no false
    positives, and union-find joins verified pairs into clusters (transitively).
    """
    sets = shingle_sets(words, shingle_words)
    records = np.flatnonzero(keep & (sets.sizes > 0))
    result = NearDupResult()
    if len(records) < 2:
        return result
    keys = minhash_band_keys(sets, records, bands, rows, seed, progress=progress)
    pairs = candidate_pairs(keys, records)
    del keys
    result.candidate_pairs = len(pairs)
    sim = jaccard_pairs(sets, pairs) if len(pairs) else np.zeros(0)
    ok = sim >= threshold
    result.verified_pairs = int(ok.sum())
    uf = UnionFind(len(words))
    best: dict[int, float] = {}
    for (i, j), s in zip(pairs[ok].tolist(), sim[ok].tolist()):
        uf.union(i, j)
        best[i], best[j] = max(best.get(i, 0.0), s), max(best.get(j, 0.0), s)
    members: dict[int, int] = {}
    for j in sorted(best):
        root = uf.find(j)
        if root != j:
            result.duplicate_of[j] = root
            result.similarity[j] = round(best[j], 4)
            members[root] = members.get(root, 1) + 1
    for size in members.values():
        result.cluster_sizes[size] = result.cluster_sizes.get(size, 0) + 1
    return result
