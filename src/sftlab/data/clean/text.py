"""Text views of records for the cleaning operators: normalised words, word ids, hashed word n-grams.

Normalisation (used by every operator that compares text): lower case, punctuation removed (Unicode
category P*, so ``_`` too), whitespace collapsed; symbols (category S*: ``+ = < > $``) stay, one token
each, so that ``a + b`` and ``a = b`` do not become the same text (``-`` is punctuation). Words are mapped to ids in first-seen order (one
``Vocab`` per cleaning run), which makes every hash below deterministic across processes, unlike Python's
``hash(str)``.
"""

from __future__ import annotations

import sys
import unicodedata
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_U64 = np.uint64


@lru_cache(maxsize=1)
def _normalise_table() -> dict[int, str]:
    """str.translate table: punctuation -> space, symbols -> the symbol between spaces."""
    table = {}
    for c in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(c))
        if category[0] == "P":
            table[c] = " "
        elif category[0] == "S":
            table[c] = f" {chr(c)} "
    return table


def normalize_words(text: str) -> list[str]:
    """The words of ``text`` after normalisation.

    >>> normalize_words("Hello,  World! a+b (x_y)")
    ['hello', 'world', 'a', '+', 'b', 'x', 'y']
    """
    return text.lower().translate(_normalise_table()).split()


class Vocab:
    """Word -> id, ids given in first-seen order."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        ids = self.ids
        return [ids.setdefault(w, len(ids)) for w in text.lower().translate(_normalise_table()).split()]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class WordIds:
    """Normalised word ids of many texts, flat: text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray  # (total words,) uint32
    offsets: np.ndarray  # (texts + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def encode_texts(texts: Iterable[str], vocab: Vocab) -> WordIds:
    """Word ids of every text (one pass, numpy output)."""
    flat, offsets = array("I"), array("q", [0])
    for text in texts:
        flat.extend(vocab.encode(text))
        offsets.append(len(flat))
    return WordIds(np.frombuffer(flat, dtype=np.uint32).copy(), np.frombuffer(offsets, dtype=np.int64).copy())


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a uint64 array): spreads every input bit over the output."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


_PRIME = _U64(0x100000001B3)


def ngram_hashes(words: WordIds, n: int, short: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word ``n``-gram of every text: ``(hashes uint64, owner int64)``, in text order.

    With ``short``, a text of ``0 < L < n`` words gives one hash, of its ``L`` words (so short texts can
    still be compared); otherwise it gives none. Vectorised: ``n`` passes over the flat id array.

    >>> w = encode_texts(["a b c", "a b", "x a b c"], Vocab())
    >>> h, owner = ngram_hashes(w, 3)
    >>> owner.tolist(), bool(h[0] == h[3])
    ([0, 1, 2, 2], True)
    """
    x = words.ids.astype(np.uint64) + _U64(1)
    lengths, starts = words.lengths, words.offsets[:-1]
    total = len(x)
    parts_h, parts_owner = [], []
    h = x.copy()
    for m in range(1, n + 1):
        if m > 1:
            h = h[:-1] * _PRIME + x[m - 1 :]
        if short and m < n:
            rec = np.flatnonzero(lengths == m)
            if len(rec):
                parts_h.append(h[starts[rec]])
                parts_owner.append(rec)
    if total >= n:
        owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[: total - n + 1]
        valid = np.arange(total - n + 1, dtype=np.int64) + n <= words.offsets[owner + 1]
        parts_h.append(h[valid])
        parts_owner.append(owner[valid])
    if not parts_h:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    hashes, owner = np.concatenate(parts_h), np.concatenate(parts_owner)
    order = np.argsort(owner, kind="stable")
    return mix64(hashes[order]), owner[order]


def word_chunks(words: WordIds, chunk_words: int = 1 << 21) -> Iterator[tuple[int, WordIds]]:
    """``(first text, WordIds of texts first..)`` in chunks of about ``chunk_words`` words (>= 1 text each),
    so that vectorised passes keep their temporary arrays small."""
    starts = words.offsets
    first = 0
    while first < len(words):
        last = max(first + 1, int(np.searchsorted(starts, starts[first] + chunk_words, side="right")) - 1)
        last = min(last, len(words))
        lo, hi = starts[first], starts[last]
        yield first, WordIds(words.ids[lo:hi], starts[first : last + 1] - lo)
        first = last


@dataclass
class ShingleSets:
    """Per text, its set of 32-bit n-gram hashes, sorted: text ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray  # uint32
    offsets: np.ndarray  # int64, (texts + 1,)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_sets(words: WordIds, n: int, chunk_words: int = 1 << 21) -> ShingleSets:
    """Unique word-``n``-gram hashes per text (texts shorter than ``n`` words: one shingle of all words)."""
    values, counts = [], []
    for _, part in word_chunks(words, chunk_words):
        hashes, owner = ngram_hashes(part, n, short=True)
        key = np.sort((owner.astype(np.uint64) << _U64(32)) | (hashes >> _U64(32)))
        del hashes, owner
        if len(key):
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        counts.append(np.bincount((key >> _U64(32)).astype(np.int64), minlength=len(part)))
        values.append((key & _U64(0xFFFFFFFF)).astype(np.uint32))
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=offsets[1:])
    return ShingleSets(np.concatenate(values) if values else np.zeros(0, np.uint32), offsets)


def text_fingerprints(words: WordIds, chunk_words: int = 1 << 21) -> np.ndarray:
    """(texts, 3) uint64: two 64-bit hashes of each text's word-id sequence, and its length.

    Each word is hashed with its position (splitmix64 of id and position, two seeds) and the hashes of a
    text are summed; equal sequences give equal rows, and two different ones the same row with
    probability about 2^-128.
    """
    out = np.zeros((len(words), 3), dtype=np.uint64)
    out[:, 2] = words.lengths
    for first, part in word_chunks(words, chunk_words):
        lengths = part.lengths
        rows = np.flatnonzero(lengths > 0)
        if not len(rows):
            continue
        ids = part.ids.astype(np.uint64)
        pos = np.arange(len(ids), dtype=np.uint64) - np.repeat(part.offsets[:-1], lengths).astype(np.uint64)
        for col, seed in ((0, 0x9E3779B97F4A7C15), (1, 0xD1B54A32D192ED03)):
            t = ids * _U64(0x100000001B3) + pos * _U64(seed) + _U64(seed)
            out[first + rows, col] = np.add.reduceat(mix64(t), part.offsets[rows])
    return out
