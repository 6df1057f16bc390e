"""Eval tasks that speak chat: the prompt is a user turn through the chat template, label scoring scores the
whole reply (label + end-of-turn) exactly as training frames it, generation stops at the end of the turn,
and reply_loss is the reference reply's mean NLL."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.config import TaskConfig, load_config
from sftlab.data.pipeline import build_dataset
from sftlab.data.render import IGNORE_INDEX
from sftlab.eval.classification import score_classification
from sftlab.eval.forward import encode_continuations, task_prompt, task_prompt_ids
from sftlab.eval.generation import score_generation
from sftlab.eval.reply import score_reply_loss

PROMPT = "Is this review positive or negative?\n\nReview: {sentence}"
ROWS = [{"sentence": "a gorgeous film .", "label": 1}, {"sentence": "dull and lifeless .", "label": 0},
        {"sentence": "funny", "label": 1}]


def task(**kw) -> TaskConfig:
    base = dict(name="t", kind="classification", chat=True, prompt_template=PROMPT,
                label_map={"0": "negative", "1": "positive"})
    return TaskConfig(**{**base, **kw})


def test_chat_label_scoring_scores_exactly_the_trained_reply(tmp_path, tiny_tokenizer):
    """Context + the gold label's target ids == the training ids of the same record, and the target
    positions are exactly the trained ones (label + <|im_end|>)."""
    src = tmp_path / "sst.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [f"data.sources.0.path={src}", "data.sources.0.format=classification",
                             f"data.sources.0.prompt_template={json.dumps(PROMPT)}",
                             "data.sources.0.completion_template='{label}'",
                             "data.sources.0.label_map={'0': negative, '1': positive}",
                             "data.mask=completion", "data.shuffle=false", f"data.cache_dir={tmp_path / 'c'}"])
    ds, _ = build_dataset(cfg.data, tiny_tokenizer, progress=False)
    t = task()
    assert len(ds) == len(ROWS)
    for row, rec in zip(ROWS, ds):
        context, targets = encode_continuations(tiny_tokenizer, task_prompt(tiny_tokenizer, t, row),
                                                ["negative<|im_end|>", "positive<|im_end|>"], prefix=False)
        gold = targets[row["label"]]
        ids = list(rec["input_ids"])
        trained = [i for i, lab in enumerate(rec["labels"]) if lab != IGNORE_INDEX]
        assert ids[: len(context) + len(gold)] == context + gold
        assert trained == list(range(len(context), len(context) + len(gold)))


def test_chat_prompt_is_the_template_render_with_generation_prompt(tiny_tokenizer):
    row = ROWS[0]
    text = task_prompt(tiny_tokenizer, task(system="Be brief."), row)
    expected = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT.format(**row)}],
        tokenize=False, add_generation_prompt=True)
    assert text == expected and text.endswith("<|im_start|>assistant\n")
    # negative control: the plain prompt has no chat markup
    assert "<|im_start|>" not in task_prompt(tiny_tokenizer, task(chat=False), row)


def test_chat_label_scoring_matches_a_direct_forward(tiny_tokenizer, tiny_model):
    tiny_model.eval()
    res = score_classification(tiny_model, tiny_tokenizer, ROWS, task(), batch_size=2)
    for row, item in zip(ROWS, res["items"]):
        prompt = task_prompt_ids(tiny_tokenizer, task(), row)
        for key, label in (("0", "negative"), ("1", "positive")):
            reply = tiny_tokenizer(label + "<|im_end|>", add_special_tokens=False)["input_ids"]
            full = prompt + reply
            with torch.no_grad():
                logp = torch.log_softmax(tiny_model(torch.tensor([full])).logits[0].float(), -1)
            ref = sum(logp[len(prompt) + k - 1, tok].item() for k, tok in enumerate(reply))
            assert item["logliks"][key] == pytest.approx(ref, abs=1e-4)


def test_reply_loss_is_mean_nll_of_reply_and_end_of_turn(tiny_tokenizer, tiny_model):
    tiny_model.eval()
    items = [{"prompt": "What is 2 + 2?", "reply": "It is 4."}, {"prompt": "Say hi.", "reply": "Hello! How can I help?"}]
    t = TaskConfig(name="r", kind="reply_loss", chat=True, prompt_template="{prompt}", answer_column="reply")
    res = score_reply_loss(tiny_model, tiny_tokenizer, items, t, batch_size=2)
    for item, row in zip(items, res["items"]):
        prompt = task_prompt_ids(tiny_tokenizer, t, item)
        reply = tiny_tokenizer(item["reply"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([prompt + reply])).logits[0].float(), -1)
        nll = -sum(logp[len(prompt) + k - 1, tok].item() for k, tok in enumerate(reply)) / len(reply)
        assert row["tokens"] == len(reply) and row["nll"] == pytest.approx(nll, abs=1e-4)
    assert res["reply_nll"] == pytest.approx(sum(r["nll"] for r in res["items"]) / 2)
    with pytest.raises(ValueError, match="item 0 has no reference reply in 'answer'"):
        score_reply_loss(tiny_model, tiny_tokenizer, items, TaskConfig(name="r", kind="reply_loss",
                                                                      prompt_template="{prompt}", answer_column="answer"))


def test_chat_generation_stops_at_end_of_turn(tiny_tokenizer, tiny_model, monkeypatch):
    """The end-of-turn marker is a stop sequence of chat generation (and not of plain generation)."""
    import sftlab.eval.generation as gen

    seen = {}

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, stop, batch_size):
        seen["stop"], seen["prompts"] = tuple(stop), prompts
        return ["Paris" for _ in prompts], [True for _ in prompts]  # (replies, ended)

    monkeypatch.setattr(gen, "generate_greedy_ended", fake_generate)
    t = TaskConfig(name="q", kind="generation", chat=True, prompt_template="{question}", answer_column="answers")
    res = score_generation(tiny_model, tiny_tokenizer, [{"question": "Capital of France?", "answers": ["Paris"]}], t)
    assert seen["stop"] == ("\n", "<|im_end|>") and res["exact_match"] == 1.0
    assert seen["prompts"][0] == task_prompt_ids(tiny_tokenizer, t, {"question": "Capital of France?"})
    score_generation(tiny_model, tiny_tokenizer, [{"question": "x", "answers": ["y"]}],
                     TaskConfig(name="q", kind="generation", prompt_template="{question}"))
    assert seen["stop"] == ("\n",)


def test_scorecard_scores_the_base_with_the_model_chat_template_and_records_precision(tmp_path, tiny_tokenizer,
                                                                                      tiny_model):
    """A base tokenizer without a chat template (the usual SFT base) is scored in the tuned model's chat format;
    reply_loss gets a paired entry; the card says which precision scored it."""
    import copy

    from sftlab.config import EvalConfig
    from sftlab.eval.scorecard import evaluate_for_config

    base_tok = copy.deepcopy(tiny_tokenizer)
    base_tok.chat_template = None
    path = tmp_path / "replies.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "reply": f"It is {2 * i}."}) + "\n"
                            for i in range(6)))
    cfg = EvalConfig(tasks=(TaskConfig(name="r", kind="reply_loss", role="versatility", path=str(path), chat=True,
                                       prompt_template="{prompt}", answer_column="reply"),),
                     precision="bf16", bootstrap_samples=100)
    card = evaluate_for_config(cfg, tiny_model.eval(), tiny_tokenizer, base_model=tiny_model,
                               base_tokenizer=base_tok, progress=False)
    entry = card["tasks"][0]["metrics"]["reply_nll"]
    assert card["precision"] == "bf16" and base_tok.chat_template == tiny_tokenizer.chat_template
    assert entry["delta"] == 0 and entry["n"] == 6  # the same model on both sides: the same prompts were scored
