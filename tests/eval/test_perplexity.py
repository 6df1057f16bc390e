"""Perplexity and KL with models whose next-token distribution is known; KL of identical models is 0."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from sftlab.eval.perplexity import score_perplexity, split_windows


class CharTokenizer:
    """Characters "a", "b" -> ids 0, 1; no special tokens."""

    pad_token_id = eos_token_id = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ["ab".index(c) for c in text]}


class UnigramLM(torch.nn.Module):
    """Ignores its input: every position predicts the fixed distribution ``probs``."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.log(torch.tensor(probs, dtype=torch.float32)))
        self.head = torch.nn.Linear(1, len(probs))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, n = input_ids.shape
        return SimpleNamespace(logits=self.log_probs.expand(b, n, -1))


# "b" then "aaab" x 8: with seq_len 4 each window predicts exactly "aaab".
TEXT = "b" + "aaab" * 8


def test_split_windows_predicts_each_token_once():
    ids = list(range(11))
    assert split_windows(ids, 4) == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]  # trailing 2 targets dropped
    assert split_windows([0, 1, 2], 4) == [[0, 1, 2]]  # the only window may be short
    with pytest.raises(ValueError):
        split_windows([0], 4)


def test_perplexity_of_known_distribution():
    # p(a) = 3/4, p(b) = 1/4 on text with exactly that mix: NLL = entropy = -(3/4 ln 3/4 + 1/4 ln 1/4).
    res = score_perplexity(UnigramLM([0.75, 0.25]), CharTokenizer(), TEXT, seq_len=4, max_tokens=10_000)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert res["n_windows"] == 8 and res["n_tokens"] == 32
    assert res["nll"] == pytest.approx(entropy, rel=1e-6)
    assert res["perplexity"] == pytest.approx(4 / 3**0.75, rel=1e-6)  # exp(entropy)
    assert [it["nll"] for it in res["items"]] == pytest.approx([entropy] * 8, rel=1e-6)
    # max_tokens caps the predicted tokens: 8 tokens = 2 windows.
    assert score_perplexity(UnigramLM([0.75, 0.25]), CharTokenizer(), TEXT, 4, 8)["n_tokens"] == 8
    # Uniform over 2 tokens: perplexity 2 whatever the text.
    assert score_perplexity(UnigramLM([0.5, 0.5]), CharTokenizer(), TEXT, 4, 100)[
        "perplexity"
    ] == pytest.approx(2.0)


def test_kl_and_cross_entropy_of_known_distributions():
    model, base = UnigramLM([0.75, 0.25]), UnigramLM([0.5, 0.5])
    res = score_perplexity(model, CharTokenizer(), TEXT, 4, 10_000, base_model=base)
    # KL(base || model) = 1/2 ln(0.5/0.75) + 1/2 ln(0.5/0.25) = 1/2 ln(4/3).
    assert res["kl_to_base"] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # Cross-entropy -sum p_base ln p_model = -(1/2 ln 3/4 + 1/2 ln 1/4) = KL + H(base) = KL + ln 2.
    assert res["cross_entropy_to_base"] == pytest.approx(
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)), rel=1e-6
    )
    assert res["base"]["perplexity"] == pytest.approx(2.0, rel=1e-6)


def test_kl_of_identical_models_is_exactly_zero(tiny_model, tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 30
    res = score_perplexity(
        tiny_model, tiny_tokenizer, text, seq_len=32, max_tokens=200, base_model=tiny_model
    )
    assert res["kl_to_base"] == 0.0
    assert all(it["kl"] == 0.0 for it in res["items"])
    twin = copy.deepcopy(tiny_model)  # a separate model with the same weights
    res2 = score_perplexity(tiny_model, tiny_tokenizer, text, seq_len=32, max_tokens=200, base_model=twin)
    assert res2["kl_to_base"] == 0.0
    assert res2["base"]["nll"] == res2["nll"]
    # The cross-entropy to an identical base is the base's entropy: >= 0 and below log |V|.
    assert 0 < res2["cross_entropy_to_base"] <= math.log(len(tiny_tokenizer)) + 1e-6


def test_perplexity_matches_plain_hf_loss(tiny_model, tiny_tokenizer):
    """One window: the perplexity equals exp of the model's own mean cross-entropy loss."""
    text = "Hello! How can I help you today? I would like a recipe for chicken soup."
    res = score_perplexity(tiny_model, tiny_tokenizer, text, seq_len=512, max_tokens=512)
    ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = tiny_model(input_ids=ids, labels=ids).loss.item()
    assert res["n_windows"] == 1 and res["n_tokens"] == ids.shape[1] - 1
    assert res["nll"] == pytest.approx(loss, rel=1e-5)
