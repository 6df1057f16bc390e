"""Shared fixtures: real tokenizers from ../shared (skipped when absent), tiny tokenizer and model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A stirring, funny and finally transporting re-imagining of beauty and the beast.",
    "What is the capital of France? The capital of France is Paris.",
    "Review: a gorgeous film. Sentiment: positive",
    "Review: dull and lifeless. Sentiment: negative",
    "def add(a, b):\n    return a + b\n",
    "Hello! How can I help you today? I would like a recipe for chicken soup.",
] * 20


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (only present in the project workspace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer(shared_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "gpt2_hf"))


@pytest.fixture(scope="session")
def mistral_tokenizer(shared_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "mistral_7b_instruct_v0.2"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE (vocab <= 512) with a ChatML template; eos is <|im_end|>."""
    from sftlab.model.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXT, vocab_size=512, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny_tok")
    tiny_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from sftlab.model.tiny import build_tiny_llama

    return build_tiny_llama(len(tiny_tokenizer), seed=0)
