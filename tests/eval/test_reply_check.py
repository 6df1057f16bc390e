"""The reply_check generation metric: golden cases for ended / on_topic / good_reply, and the ended flag from
greedy decoding (eos within the budget vs cut by max_new_tokens)."""

from __future__ import annotations

import json

import torch

from sftlab.config import TaskConfig
from sftlab.eval.generation import generate_greedy_ended, score_generation
from sftlab.eval.metrics import check_reply, is_degenerate


def test_check_reply_golden():
    ref = "The capital of France is Paris."  # content words: capital, france, paris
    assert check_reply("Paris is the capital.", True, ref) == {"ended": 1.0, "on_topic": 1.0, "good_reply": 1.0}
    assert check_reply("Paris.", True, ref)["on_topic"] == 1.0  # 1 of 3 content words: the threshold
    assert check_reply("I like turtles.", True, ref) == {"ended": 1.0, "on_topic": 0.0, "good_reply": 0.0}
    assert check_reply("Paris is the capital", False, ref)["ended"] == 0.0  # ran out of tokens
    assert check_reply("   ", True, ref)["ended"] == 0.0
    loop = "Paris is the capital of France. " * 3
    assert is_degenerate(loop) and check_reply(loop, True, ref)["good_reply"] == 0.0
    assert not is_degenerate("one two three four one two three five")


def test_ended_flag_and_scores(tmp_path, tiny_model, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("hello there")
    eos = tiny_tokenizer.eos_token_id

    def always(token: int):  # a head whose greedy choice is always ``token``
        head = torch.nn.Linear(tiny_model.config.hidden_size, tiny_model.config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[token] = 10.0
        tiny_model.lm_head = head

    always(eos)
    _, ended = generate_greedy_ended(tiny_model, tiny_tokenizer, [prompt], max_new_tokens=4, stop=[])
    assert ended == [True]
    always(eos + 1 if eos + 1 < tiny_model.config.vocab_size else eos - 1)  # never eos: the budget cuts it
    _, ended = generate_greedy_ended(tiny_model, tiny_tokenizer, [prompt], max_new_tokens=4, stop=[])
    assert ended == [False]
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "reply": "a reply"}) + "\n")
    task = TaskConfig(name="gen", kind="generation", path=str(path), prompt_template="{prompt}",
                      answer_column="reply", metric="reply_check", max_new_tokens=4, stop=())  # fmt: skip
    res = score_generation(tiny_model, tiny_tokenizer, [{"prompt": "hi", "reply": "a reply"}], task)
    assert set(res) >= {"good_reply", "ended", "on_topic", "n"} and res["ended"] == 0.0
