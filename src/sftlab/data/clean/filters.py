"""Heuristic quality filters adapted to chat data: each looks at the response (the last assistant turn) and
returns ``(reason, detail)`` for a record to remove, or None.

The repetition measures follow Gopher's quality filters (Rae et al. 2021, table A1): the share of
characters in duplicated lines and in the most frequent word n-gram (words: runs of letters and digits).
Gopher's web-document thresholds (0.3 for lines; 0.20 / 0.18 / 0.16 for 2 / 3 / 4-grams) remove songs
with a chorus and much correct code from instruction data (8% of the four Alpaca-style sets in
../shared/data, nearly all of it code), so the defaults are looser, aimed at degenerate responses
(loops, runs of one token): lines without a letter or shorter than ``MIN_LINE_CHARS`` are not counted
as duplicated lines, an n-gram counts only when it occurs at least twice, and responses shorter than
``REPETITION_MIN_WORDS`` words are not measured for n-grams.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from sftlab.config import FilterConfig
from sftlab.data.clean.text import normalize_words

MIN_LINE_CHARS = 10
REPETITION_MIN_WORDS = 20
_WORD = re.compile(r"\w+")
# Characters nobody writes on purpose: controls other than tab / newline / carriage return, surrogates,
# private use, unassigned code points, and U+FFFD (what a decoder leaves for bytes it could not read).
_BAD_CATEGORIES = {"Cc", "Cs", "Co", "Cn"}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}
LANGUAGE_MIN_CHARS = 20  # shorter texts are not classified (too little evidence)


@dataclass(frozen=True)
class FilterHit:
    reason: str  # empty_response | short_response | long_response | prompt_echo | duplicate_lines | ...
    detail: str  # the measured value and the threshold, for removed.jsonl


def duplicate_line_share(text: str) -> float:
    """Share of characters (of non-empty lines) in lines that repeat an earlier line.

    >>> round(duplicate_line_share("same line here\\nsame line here\\nanother one, different"), 3)
    0.28
    >>> duplicate_line_share("}\\n}\\n}")  # short lines are not counted
    0.0
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    total = sum(len(line) for line in lines)
    seen: set[str] = set()
    dup = 0
    for line in lines:
        if line in seen and len(line) >= MIN_LINE_CHARS and any(c.isalpha() for c in line):
            dup += len(line)
        seen.add(line)
    return dup / total if total else 0.0


def top_ngram_share(words: list[str], n: int) -> float:
    """Share of word characters covered by all occurrences of the most frequent word ``n``-gram (0 when no
    n-gram occurs twice).

    >>> round(top_ngram_share("a b a b a b c".split(), 2), 3)
    0.857
    """
    if len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return min(1.0, count * sum(len(w) for w in gram) / total) if total else 0.0


def nonprintable_share(text: str) -> float:
    """Share of characters that are control / unassigned / private-use code points or U+FFFD."""
    if not text:
        return 0.0
    bad = sum(
        1 for c in text if c == "\ufffd" or (c not in _ALLOWED_CONTROLS and unicodedata.category(c) in _BAD_CATEGORIES)
    )
    return bad / len(text)


def prompt_echo(prompt_words: list[str], response_words: list[str], min_words: int = 3) -> float:
    """Share of the response's words that are a copy of the whole prompt (0 when the response does not
    contain the whole normalised prompt, or the prompt has fewer than ``min_words`` words).

    >>> prompt_echo("name a colour".split(), "name a colour".split())
    1.0
    >>> prompt_echo("add two numbers".split(), "add two numbers def add a b return a b".split())
    0.3
    >>> prompt_echo("what is the capital of france".split(), "paris".split())
    0.0
    """
    if len(prompt_words) < min_words or len(response_words) < len(prompt_words):
        return 0.0
    if f" {' '.join(prompt_words)} " not in f" {' '.join(response_words)} ":
        return 0.0
    return len(prompt_words) / len(response_words)


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text`` by py3langid (None when too short to tell)."""
    if sum(c.isalpha() for c in text) < LANGUAGE_MIN_CHARS:
        return None
    import py3langid

    return py3langid.classify(text)[0]


def check_language_support(cfg: FilterConfig) -> None:
    """Fail before any work when a language check is configured but its library is missing."""
    if cfg.languages:
        try:
            import py3langid  # noqa: F401
        except ImportError:
            from sftlab.data.errors import DataError

            raise DataError(
                "the language check needs the py3langid package",
                field="data.clean.filter.languages",
                fix="pip install 'sftlab[clean]' (or py3langid), or remove data.clean.filter.languages",
            ) from None


def check_record(prompt: str, response: str, cfg: FilterConfig) -> FilterHit | None:
    """The first filter ``response`` (with its ``prompt``) fails, or None."""
    if not response.strip():
        return FilterHit("empty_response", "the response is empty or whitespace")
    n_words = len(response.split())
    if n_words < cfg.min_response_words:
        return FilterHit("short_response", f"{n_words} words < min_response_words {cfg.min_response_words}")
    if cfg.max_response_words is not None and n_words > cfg.max_response_words:
        return FilterHit("long_response", f"{n_words} words > max_response_words {cfg.max_response_words}")
    share = nonprintable_share(response + prompt)
    if share > cfg.max_nonprintable_share:
        return FilterHit("nonprintable", f"{share:.4f} of characters are not printable > {cfg.max_nonprintable_share}")
    if cfg.prompt_echo_share is not None and prompt:
        share = prompt_echo(normalize_words(prompt), normalize_words(response))
        if share and share >= cfg.prompt_echo_share:
            return FilterHit("prompt_echo", f"the response repeats the whole prompt ({share:.0%} of its words)")
    share = duplicate_line_share(response)
    if share > cfg.max_duplicate_line_share:
        return FilterHit(
            "duplicate_lines", f"{share:.3f} of characters in repeated lines > {cfg.max_duplicate_line_share}"
        )
    words = _WORD.findall(response.lower())
    if len(words) >= REPETITION_MIN_WORDS:
        for n, limit in zip((2, 3, 4), cfg.max_top_ngram_share):
            share = top_ngram_share(words, n)
            if share > limit:
                return FilterHit("repeated_ngrams", f"top {n}-gram covers {share:.3f} of the words > {limit}")
    if cfg.languages:
        lang = detect_language(f"{prompt}\n{response}")
        if lang is not None and lang not in cfg.languages:
            return FilterHit("language", f"detected {lang!r}, allowed {', '.join(cfg.languages)}")
    return None
