"""The base-score cache: an identical second call reads the cache (the base is not scored again) and gives the
same scorecard; other weights, another template or another task miss it."""

from __future__ import annotations

import json

import torch

import sftlab.eval.kinds as kinds
from sftlab.config import TaskConfig
from sftlab.eval.base_cache import BaseCache
from sftlab.eval.scorecard import evaluate_model
from sftlab.model.tiny import build_tiny_llama


def _task(tmp_path, name="sent", role="specialty"):
    path = tmp_path / "cls.jsonl"
    rows = ["a gorgeous film", "dull and lifeless", "funny and moving", "a waste of time"] * 3
    path.write_text("".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(rows)))
    return TaskConfig(name=name, role=role, path=str(path), prompt_template="Review: {sentence}\nSentiment:",
                      label_map={"0": " negative", "1": " positive"})  # fmt: skip


def _count_calls(monkeypatch):
    calls = []
    real = kinds.score_task

    def counting(model, *a, **k):
        calls.append(model)
        return real(model, *a, **k)

    monkeypatch.setattr(kinds, "score_task", counting)
    return calls


def test_second_identical_call_reads_the_cache(tmp_path, monkeypatch, tiny_tokenizer):
    calls = _count_calls(monkeypatch)
    model, base = build_tiny_llama(len(tiny_tokenizer), seed=1), build_tiny_llama(len(tiny_tokenizer), seed=0)
    cache = BaseCache(tmp_path / "cache")
    task = _task(tmp_path)
    first = evaluate_model(model, tiny_tokenizer, [task], base_model=base, base_cache=cache, keep_items=True)
    assert calls == [model, base] and len(list((tmp_path / "cache").glob("*.json"))) == 1
    # The same task under another name and role (the other sweep of a pair) is the same base score.
    second = evaluate_model(model, tiny_tokenizer, [_task(tmp_path, "renamed", "versatility")], base_model=base,
                            base_cache=cache, keep_items=True)  # fmt: skip
    assert calls == [model, base, model]  # the base was not scored again
    assert first["tasks"][0]["metrics"] == second["tasks"][0]["metrics"]
    assert first["tasks"][0]["items"] == second["tasks"][0]["items"]


def test_other_weights_template_or_task_miss_the_cache(tmp_path, monkeypatch, tiny_tokenizer):
    calls = _count_calls(monkeypatch)
    model, base = build_tiny_llama(len(tiny_tokenizer), seed=1), build_tiny_llama(len(tiny_tokenizer), seed=0)
    cache = BaseCache(tmp_path / "cache")
    task = _task(tmp_path)
    evaluate_model(model, tiny_tokenizer, [task], base_model=base, base_cache=cache)
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3  # one weight of the base changed
    evaluate_model(model, tiny_tokenizer, [task], base_model=base, base_cache=cache)
    other = TaskConfig(**{**task.__dict__, "prompt_template": "Text: {sentence}\nSentiment:"})
    evaluate_model(model, tiny_tokenizer, [other], base_model=base, base_cache=cache)
    assert calls.count(base) == 3 and len(list((tmp_path / "cache").glob("*.json"))) == 3
    # A damaged entry is scored again.
    for f in (tmp_path / "cache").glob("*.json"):
        f.write_text("{not json")
    evaluate_model(model, tiny_tokenizer, [other], base_model=base, base_cache=cache)
    assert calls.count(base) == 4
