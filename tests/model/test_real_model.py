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


def test_lora_on_the_tied_embedding_merges_into_the_trained_model():
    """SmolLM2 ties its input embedding and LM head. An adapter on ``embed_tokens`` (drawn: std 0.01), merged with
    ``merge_lora``, computes what the adapter model does; merged in place (peft's ``merge_and_unload`` alone), the
    change reaches the LM head too (measured 2026-12-02 on these 7 tokens: max |logit diff| 15.0, 57% of argmaxes
    equal; merge_lora: 6e-5, all equal)."""
    from transformers import AutoModelForCausalLM

    from sftlab.config import LoraConfig
    from sftlab.model.adapters import apply_lora, merge_lora, tied_embeddings

    x = torch.tensor([[1, 4093, 314, 253, 1345, 30, 2]])
    got = {}
    for merge in (merge_lora, lambda m: m.merge_and_unload()):
        model = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32)
        assert tied_embeddings(model)
        model = apply_lora(model, LoraConfig(enabled=True, r=8, alpha=16, dropout=0,
                                             target_modules=("embed_tokens", "q_proj", "v_proj")))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n or "lora_embedding_A" in n:  # the parts that start at zero
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            ref = model.eval()(x).logits
            got[merge is merge_lora] = (merge(model)(x).logits - ref).abs().max().item()
    assert got[True] < 1e-3
    assert got[False] > 1.0  # the control: the plain merge is another model
