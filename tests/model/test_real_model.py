"""The real pretrained chat model (SmolLM2-135M-Instruct), when ``sftlab model fetch`` has cached it here.

Slow and skipped on a fresh clone: run ``sftlab model fetch smollm2-135m-instruct`` (or ``make demo``) first,
then ``pytest -m slow tests/model/test_real_model.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftlab.model.fetch import cached_folder

REPO = Path(__file__).resolve().parents[2]
FOLDER = cached_folder("smollm2-135m-instruct", REPO / ".cache" / "sftlab")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(FOLDER is None, reason="SmolLM2-135M-Instruct is not cached: sftlab model fetch "
                                 "smollm2-135m-instruct")]


@pytest.fixture(scope="module")
def real():
    from sftlab.generate import load_for_inference

    return load_for_inference(FOLDER)


def test_answers_a_question_through_its_chat_template(real):
    from sftlab.generate import build_prompt_ids

    model, tok = real
    ids = build_prompt_ids(tok, "What is the capital of France?")
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in reply


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_reloads_in_transformers_close(real, tmp_path, quant):
    """Export the real model and read it back with transformers' GGUF loader. Tolerances (measured 2026-12-01 on
    a chat prompt + 14 reply tokens): f16 max |logit diff| 0.041 (< 0.1 asserted), every argmax equal;
    q8_0 (each weight rounded to 1/127 of its 32-block's largest) mean KL 0.0027 nats/token (< 0.01 asserted),
    95% of argmaxes equal (>= 90% asserted)."""
    from transformers import AutoModelForCausalLM

    from sftlab.generate import build_prompt_ids
    from sftlab.model.gguf import load_gguf_tokenizer, write_gguf

    model, tok = real
    model = model.cpu()
    path = write_gguf(model, tok, tmp_path / f"smollm2-{quant}.gguf", quant=quant)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    reply = tok("Red, green and blue are three colours that", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([build_prompt_ids(tok, "Name three colours.") + reply])
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    if quant == "f16":
        assert (a - b).abs().max().item() < 0.1 and agree == 1.0
    else:
        assert kl.mean().item() < 0.01 and agree >= 0.9
    text = "The capital of France is Paris. Numbers: 12345, unicode: café, code: def f(x): return x"
    assert load_gguf_tokenizer(path)(text)["input_ids"] == tok(text)["input_ids"]
