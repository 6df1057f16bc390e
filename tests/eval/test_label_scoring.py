"""Label scoring: tokenisation at the BPE boundary; batched scores equal an unbatched reference."""

from __future__ import annotations

import pytest
import torch

from sftlab.config import TaskConfig
from sftlab.eval.classification import score_classification
from sftlab.eval.forward import encode_continuations
from sftlab.eval.tasks import load_task_items

SENTENCES = [
    "a gorgeous film .",
    "dull and lifeless , a waste of two hours that never ends and never once surprises anyone .",
    "funny",
    "the quick brown fox jumps over the lazy dog , again and again .",
    "a stirring , funny and finally transporting re-imagining of beauty and the beast .",
]


def reference_loglik(model, tokenizer, prompt: str, continuation: str) -> float:
    """Unbatched: sum of log p over the ids of prompt + continuation that the prompt alone does not start."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + continuation)["input_ids"]
    start = next((i for i, (x, y) in enumerate(zip(prompt_ids, full)) if x != y), len(prompt_ids))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    return sum(logp[i - 1, full[i]].item() for i in range(start, len(full)))


@pytest.mark.parametrize(
    "prompt", ["Review: a gorgeous film\nSentiment:", "Review: a gorgeous film\nSentiment: "]
)
def test_continuation_ids_are_the_tail_of_the_joint_tokenisation(tiny_tokenizer, prompt):
    labels = [" negative", " positive", " very positive", " pos"]
    if prompt.endswith(" "):
        labels = [c.lstrip() for c in labels]
    context, targets = encode_continuations(tiny_tokenizer, prompt, labels)
    for cont, tgt in zip(labels, targets):
        assert context + tgt == tiny_tokenizer(prompt + cont)["input_ids"]  # exactly what training sees
    if prompt.endswith(" "):
        # The trailing space merges into the label token: the prompt alone ends with a lone " " that the
        # joint tokenisation never has, so the context stops before it.
        assert context == tiny_tokenizer(prompt)["input_ids"][:-1]
    else:
        assert context == tiny_tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize("fixture", ["gpt2_tokenizer", "mistral_tokenizer"])
def test_continuation_ids_with_real_tokenizers(request, fixture):
    """GPT-2 (no bos) and Mistral (sentencepiece, bos <s>): context + target == tokenizer(prompt + label)."""
    tok = request.getfixturevalue(fixture)
    for prompt, labels in [
        ("Review: fine\nSentiment:", [" negative", " positive"]),
        ("Review: fine\nSentiment: ", ["negative", "positive"]),
    ]:
        context, targets = encode_continuations(tok, prompt, labels)
        for cont, tgt in zip(labels, targets):
            assert context + tgt == tok(prompt + cont)["input_ids"]
            assert len(tgt) == 1  # the label word, with the space merged in


def test_batched_label_scores_match_unbatched_reference(tiny_model, tiny_tokenizer):
    """Prefix sharing, right padding, length sorting and logits_to_keep do not change a single score."""
    label_map = {"0": " negative", "1": " positive", "2": " very positive", "3": " pos"}
    task = TaskConfig(name="t", prompt_template="Review: {sentence}\nSentiment:", label_map=label_map)
    items = [{"sentence": s, "label": i % 4} for i, s in enumerate(SENTENCES)]
    res = score_classification(tiny_model, tiny_tokenizer, items, task, batch_size=3)
    for item, out in zip(items, res["items"]):
        prompt = f"Review: {item['sentence']}\nSentiment:"
        for key, cont in label_map.items():
            ref = reference_loglik(tiny_model, tiny_tokenizer, prompt, cont)
            assert out["logliks"][key] == pytest.approx(ref, abs=2e-4)
        assert out["pred"] == max(out["logliks"], key=out["logliks"].get)
        assert sum(out["probs"].values()) == pytest.approx(1.0)
        assert out["correct"] == int(out["pred"] == out["gold"])
    assert res["accuracy"] == pytest.approx(sum(o["correct"] for o in res["items"]) / len(items))


def test_classification_rejects_unknown_labels(tiny_model, tiny_tokenizer):
    task = TaskConfig(name="t", prompt_template="{sentence}:", label_map={"0": " no", "1": " yes"})
    with pytest.raises(ValueError, match="not a key of label_map"):
        score_classification(tiny_model, tiny_tokenizer, [{"sentence": "x", "label": 2}], task)


def test_load_sst2_dev_items(shared_data):
    task = TaskConfig(
        name="sst2_dev",
        path=str(shared_data / "sentiment/sst2/dev.jsonl"),
        prompt_template="Review: {sentence}\nSentiment:",
        label_map={"0": " negative", "1": " positive"},
    )
    items = load_task_items(task)
    assert len(items) == 872
    assert {it["label"] for it in items} == {0, 1}
    assert len(load_task_items(TaskConfig(**{**task.__dict__, "limit": 10}))) == 10
