"""Fixtures of the data tests: small helpers to read masks, and a fresh copy of the tiny tokenizer."""

from __future__ import annotations

import pytest


def _runs(input_ids, labels):
    """Contiguous trained runs of ids: [[ids of run 1], [ids of run 2], ...]; checks labels == ids there."""
    out, prev = [], False
    for i, (tok, lab) in enumerate(zip(input_ids, labels)):
        trained = lab != -100
        if trained:
            assert lab == tok, f"label {lab} != input id {tok} at {i}"
            if not prev:
                out.append([])
            out[-1].append(tok)
        prev = trained
    return out


@pytest.fixture(scope="session")
def trained_runs():
    return _runs


@pytest.fixture()
def fresh_tiny_tokenizer(tiny_tokenizer_dir):
    """A tiny tokenizer loaded from disk: tests may add tokens or change its template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="session")
def expected_pieces():
    """Token ids and labels built piece by piece from hand-written text: [(text, trained), ...]."""

    def build(tokenizer, pieces):
        ids, labels = [], []
        for text, trained in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        return ids, labels

    return build
