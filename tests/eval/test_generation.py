"""Greedy generation: stop sequences, batched left-padded decoding == one-by-one argmax decoding, scoring."""

from __future__ import annotations

import pytest
import torch

from sftlab.config import TaskConfig
from sftlab.eval.generation import cut_at_stop, generate_greedy, score_generation
from sftlab.eval.items import gold_answers
from sftlab.eval.metrics import compute_exact_match, compute_token_f1

PROMPTS = ["The capital of France is", "def add(a, b):", "Hello! How can I help you today? I would like", "A"]


def reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """Argmax decoding without cache, padding or batching."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_cut_at_stop():
    assert cut_at_stop("Paris\nQuestion: x", ["\n"]) == "Paris"
    assert cut_at_stop("Paris. Next", ["\n", ". "]) == "Paris"
    assert cut_at_stop("a<|im_end|>b\nc", ["\n", "<|im_end|>"]) == "a"  # the earliest stop wins
    assert cut_at_stop("no stop", ["\n", ""]) == "no stop"


def test_gold_answers_forms():
    assert gold_answers({"text": ["Denver Broncos", "Broncos"], "answer_start": [177, 184]}) == [
        "Denver Broncos",
        "Broncos",
    ]
    assert gold_answers("Paris") == ["Paris"]
    assert gold_answers(["a", "b"]) == ["a", "b"]


def test_batched_greedy_equals_unbatched_reference(tiny_model, tiny_tokenizer):
    prompts = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    tiny_model.generation_config.eos_token_id = None  # decode the full budget, whatever comes out
    got = generate_greedy(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6, stop=[], batch_size=3)
    for p, text in zip(prompts, got):
        ref = reference_greedy(tiny_model, p, 6)
        assert text == tiny_tokenizer.decode(ref, skip_special_tokens=True)


def test_score_generation_uses_squad_metrics(tiny_model, tiny_tokenizer):
    items = [{"q": p, "answers": {"text": ["Paris", "the city of Paris"]}} for p in PROMPTS]
    task = TaskConfig(
        name="qa", kind="generation", prompt_template="Q: {q}\nA:", max_new_tokens=5, stop=("\n",)
    )
    res = score_generation(tiny_model, tiny_tokenizer, items, task, batch_size=2)
    assert res["n"] == len(items)
    for it in res["items"]:
        assert "\n" not in it["prediction"]
        assert it["exact_match"] == compute_exact_match(it["prediction"], it["golds"])
        assert it["f1"] == pytest.approx(compute_token_f1(it["prediction"], it["golds"]))
    assert res["f1"] == pytest.approx(sum(it["f1"] for it in res["items"]) / len(items))


def test_score_generation_golden_aggregates(monkeypatch, tiny_model, tiny_tokenizer):
    """With decoding replaced by known answers, EM / F1 / ROUGE-L aggregates are the hand values."""
    preds = ["The Paris.", "in the city of Paris", "Lyon"]
    monkeypatch.setattr("sftlab.eval.generation.generate_greedy_ended", lambda *a, **k: (list(preds), [True] * 3))
    items = [{"q": "x", "answers": {"text": ["Paris", "Paris, France"]}} for _ in preds]
    task = TaskConfig(name="qa", kind="generation", prompt_template="{q}")
    res = score_generation(tiny_model, tiny_tokenizer, items, task)
    # EM: 1, 0, 0. F1: 1; [in, city, of, paris] vs [paris]: P 1/4, R 1 -> 2/5; 0.
    assert res["exact_match"] == pytest.approx(1 / 3)
    assert res["f1"] == pytest.approx((1 + 0.4 + 0) / 3)
    rouge = score_generation(
        tiny_model, tiny_tokenizer, items, TaskConfig(**{**task.__dict__, "metric": "rouge_l"})
    )
    # ROUGE-L keeps articles. [the, paris] vs [paris]: P 1/2, R 1 -> 2/3. [in, the, city, of, paris]:
    # vs [paris] P 1/5, R 1 -> 1/3, vs [paris, france] P 1/5, R 1/2 -> 2/7; max 1/3. [lyon]: 0.
    assert rouge["rouge_l"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
