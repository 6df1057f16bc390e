"""``sftlab chat`` in a real terminal (pexpect): two turns, /reset, Ctrl-D; replies equal greedy generation on
the whole conversation rendered with the saved chat template."""

from __future__ import annotations

import io
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

TURNS = ["What is 3 + 3?", "And 5 + 5?"]


SYSTEM = "Be brief."


def expected_replies(model_dir, turns: list[str], max_new_tokens: int, reset_after: int | None = None) -> list[str]:
    """Sampled replies (temperature 1, session seed 0) to ``turns``, each on the whole conversation so far
    (system prompt first); the conversation starts over after turn ``reset_after``."""
    import torch

    from sftlab.chat import reply
    from sftlab.generate import build_prompt_ids, load_for_inference

    model, tok = load_for_inference(model_dir)
    torch.manual_seed(0)
    start = [{"role": "system", "content": SYSTEM}]
    messages, out = list(start), []
    for i, text in enumerate(turns):
        messages.append({"role": "user", "content": text})
        ids = build_prompt_ids(tok, messages)
        answer = reply(
            model, tok, ids, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, stream=False, out=io.StringIO()
        )
        messages.append({"role": "assistant", "content": answer})
        out.append(answer)
        if reset_after == i:
            messages = list(start)
    return out


def read_reply(child) -> str:
    child.expect("assistant> ")
    child.expect(r"\r\nyou> ")
    return child.before.replace("\r\n", "\n")


def test_chat_two_turns_reset_and_ctrl_d(real_runs):
    model_dir = real_runs.base  # untrained: long, varied replies that tell conversations apart
    want = expected_replies(model_dir, [*TURNS, TURNS[1]], max_new_tokens=12, reset_after=1)
    lost_history = expected_replies(model_dir, [TURNS[0], TURNS[1]], max_new_tokens=12, reset_after=0)
    assert want[1] != lost_history[1]  # the second reply depends on the first turn: a lost history would show

    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "sftlab",
            "chat",
            "--model",
            str(model_dir),
            "--temperature",
            "1",
            "--top-p",
            "1",
            "--seed",
            "0",
            "--max-new-tokens",
            "12",
            "--system",
            SYSTEM,
        ],
        encoding="utf-8",
        timeout=120,
    )
    child.expect("chatting with .*base")
    child.expect("you> ")
    got = []
    for text in TURNS:
        child.sendline(text)
        got.append(read_reply(child))
    child.sendline("/reset")
    child.expect(r"\(conversation cleared\)")
    child.expect("you> ")
    child.sendline(TURNS[1])
    got.append(read_reply(child))  # after /reset the history is gone
    assert got == want and all(got)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_without_template_is_a_clear_error():
    from sftlab.chat import chat_loop
    from sftlab.config import ConfigError

    class NoTemplate:
        chat_template = None

    with pytest.raises(ConfigError, match="no chat template; use sftlab generate --raw"):
        chat_loop(None, NoTemplate(), read=lambda _: "/exit")


def test_fit_messages_drops_oldest_turns(tiny_tokenizer):
    from sftlab.chat import fit_messages

    msgs = [{"role": "system", "content": "s"}]
    for i in range(4):
        msgs += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i}"}]
    msgs.append({"role": "user", "content": "last"})
    full, _, dropped = fit_messages(tiny_tokenizer, msgs, None)
    assert dropped == 0
    ids, kept, dropped = fit_messages(tiny_tokenizer, msgs, budget=len(full) - 1)
    assert dropped == 1 and kept[0]["role"] == "system" and kept[1]["content"].startswith("question 1")
    assert kept[-1]["content"] == "last" and len(ids) <= len(full) - 1
