"""GGUF in and out: a tiny random model written with the gguf library, read back by transformers' own GGUF
loader (same logits), trained from ``model.name_or_path: x.gguf``, and a LoRA run exported merged."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sftlab.config import ConfigError, load_config
from sftlab.model import gguf as gguf_mod
from sftlab.model.gguf import load_gguf_model, load_gguf_tokenizer, write_gguf
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.run import run_training

pytest.importorskip("gguf")

# Largest |logit difference| allowed against the HF model (logits of these models are ~1 in size). Measured:
# llama f16 2.3e-4, bf16 1.6e-3, q8_0 6.0e-3; qwen2 f16 2.5e-4, bf16 2.1e-3, q8_0 6.1e-3. f32 is exact.
TOLERANCE = {"f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 3e-2}


def tiny_qwen2(vocab: int):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def models(tok):
    return {"llama": build_tiny_llama(len(tok), seed=0, intermediate_size=192), "qwen2": tiny_qwen2(len(tok))}


def hf_gguf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the file as transformers' own GGUF loader reads it (not sftlab's)."""
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_loads_in_transformers_with_same_logits(tmp_path, tiny_tokenizer, arch):
    model = models(tiny_tokenizer)[arch].eval()
    ids = torch.tensor([tiny_tokenizer("Hello! How can I help you today? The capital of France")["input_ids"]])
    with torch.no_grad():
        ref = model(ids).logits
    for quant, tol in TOLERANCE.items():
        path = write_gguf(model, tiny_tokenizer, tmp_path / f"{arch}-{quant}.gguf", quant=quant)
        diff = (hf_gguf_logits(path, ids) - ref).abs().max().item()
        assert diff <= tol, (quant, diff)
    assert not list(tmp_path.glob("*.tmp"))


def test_negative_control_without_rotary_permutation_logits_differ(tmp_path, tiny_tokenizer, monkeypatch):
    """The llama q / k layout matters: writing them unpermuted gives other logits (the test above can fail)."""
    model = models(tiny_tokenizer)["llama"].eval()
    ids = torch.tensor([tiny_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    monkeypatch.setattr(gguf_mod, "permute_rotary", lambda w, n: w)
    path = write_gguf(model, tiny_tokenizer, tmp_path / "wrong.gguf", quant="f32")
    with torch.no_grad():
        assert (hf_gguf_logits(path, ids) - model(ids).logits).abs().max().item() > 1e-3


def test_tokenizer_and_chat_template_round_trip(tmp_path, tiny_tokenizer):
    path = write_gguf(models(tiny_tokenizer)["qwen2"], tiny_tokenizer, tmp_path / "t.gguf", quant="f16")
    tok = load_gguf_tokenizer(path)
    texts = ["The quick brown fox.", "def add(a, b):\n    return a + b\n", "<|im_start|>user\nhi there<|im_end|>\n",
             "  spaces   and\ttabs ", "naïve café"]
    for text in texts:
        assert tok(text)["input_ids"] == tiny_tokenizer(text)["input_ids"], text
    assert tok.chat_template == tiny_tokenizer.chat_template
    assert (tok.eos_token, tok.pad_token) == (tiny_tokenizer.eos_token, tiny_tokenizer.pad_token)


def test_loader_gives_a_plain_saveable_model(tmp_path, tiny_tokenizer):
    model = models(tiny_tokenizer)["llama"].eval()
    path = write_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", quant="f32")
    loaded = load_gguf_model(path)
    assert getattr(loaded.config, "quantization_config", None) is None
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "hf")  # a GGUF-quantised model would refuse this
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_unsupported_family_and_quant_are_clear_errors(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="supports the llama, qwen2 families"):
        write_gguf(gpt2, tiny_tokenizer, tmp_path / "g.gguf")
    with pytest.raises(ConfigError, match="unknown GGUF type 'q3'"):
        write_gguf(models(tiny_tokenizer)["llama"], tiny_tokenizer, tmp_path / "g.gguf", quant="q3")
    assert not list(tmp_path.iterdir())


def chat_rows(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gguf_run(tmp_path, gguf_file: Path, *extra: str) -> dict:
    cfg = load_config(None, [
        f"model.name_or_path={gguf_file}", f"data.sources.0.path={chat_rows(tmp_path / 'chat.jsonl')}",
        "data.max_seq_len=64", "train.max_steps=2", "train.lr=1e-2", "train.micro_batch_size=4",
        "train.progress=false", "eval.samples=0", f"output.dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}", *extra,
    ])
    return run_training(cfg, progress=False)


def test_gguf_file_as_model_trains_and_saves_safetensors(tmp_path, tiny_tokenizer):
    model = models(tiny_tokenizer)["llama"]
    path = write_gguf(model, tiny_tokenizer, tmp_path / "base.gguf", quant="f32")
    summary = gguf_run(tmp_path, path)
    assert summary["steps"] == 2
    final = Path(summary["final_dir"])
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.gguf"))
    tuned = AutoModelForCausalLM.from_pretrained(final)
    assert getattr(tuned.config, "quantization_config", None) is None
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, model.state_dict()[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).chat_template == tiny_tokenizer.chat_template


@pytest.mark.parametrize("target", ["all-linear", "[embed_tokens,q_proj]"])  # the second: LoRA on a tied matrix
def test_lora_run_on_gguf_base_exports_merged_gguf(tmp_path, tiny_tokenizer, target):
    from sftlab.generate import load_for_inference
    from sftlab.model.adapters import merge_lora
    from sftlab.model.export import export_gguf

    path = write_gguf(models(tiny_tokenizer)["llama"], tiny_tokenizer, tmp_path / "base.gguf", quant="f32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = gguf_run(tmp_path, path, "lora.enabled=true", "lora.r=4", "lora.dropout=0", "train.lr=5e-2",
                           f"lora.target_modules={target}")
    assert not [w for w in caught if "config file" in str(w.message)]  # peft asked nothing of the .gguf base
    final = Path(summary["final_dir"])
    assert all("lora_" in k for k in load_file(final / "adapter_model.safetensors"))  # no base embeddings
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(path)
    out = export_gguf(tmp_path / "run", tmp_path / "merged.gguf", quant="f32")
    adapter, tok = load_for_inference(final)
    ids = torch.tensor([tok("What is 3 + 3?")["input_ids"]])
    with torch.no_grad():
        trained = adapter(ids).logits
        ref = merge_lora(adapter)(ids).logits
    assert (ref - trained).abs().max().item() < 1e-4  # merged, it is the model that was trained
    with torch.no_grad():
        base = load_gguf_model(path)(ids).logits
    assert (ref - base).abs().max().item() > 1e-4  # the adapter changed the model ...
    assert (hf_gguf_logits(out, ids) - ref).abs().max().item() < 1e-4  # ... and the file holds the merged one


def test_q8_0_rows_not_divisible_by_32_stay_f16():
    from gguf import GGMLQuantizationType

    data = np.random.default_rng(0).standard_normal((8, 48)).astype(np.float32)
    array, raw = gguf_mod._encode_tensor(data, "q8_0")
    assert raw is None and array.dtype == np.float16
    array, raw = gguf_mod._encode_tensor(data[:, :32], "q8_0")
    assert raw == GGMLQuantizationType.Q8_0


def test_convert_refuses_a_non_gguf_file_and_a_non_empty_folder(tmp_path, tiny_tokenizer, capsys):
    from sftlab.cli import main

    (tmp_path / "model.bin").write_bytes(b"x")
    assert main(["model", "convert", str(tmp_path / "model.bin"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'model.bin'} is not a .gguf file")
    path = write_gguf(models(tiny_tokenizer)["llama"], tiny_tokenizer, tmp_path / "m.gguf", quant="f32")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["model", "convert", str(path), "--out", str(tmp_path / "busy")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert main(["model", "convert", str(path), "--out", str(tmp_path / "hf")]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.num_hidden_layers == 2


GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA_CPP_SPLITS = {  # llama.cpp's src/llama-vocab.cpp: the regexes each pre-tokenizer name applies, in order
    "gpt-2": [GPT2_SPLIT],
    "smollm": [r"\p{N}", GPT2_SPLIT],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"],
}


def llama_cpp_ids(tokenizer, name: str, text: str) -> list[int]:
    """Token ids of ``text`` as llama.cpp splits it for pre-tokenizer ``name``, then byte-level BPE."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), "isolated") for r in LLAMA_CPP_SPLITS[name]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return backend.encode(text, add_special_tokens=False).ids


def test_the_written_pre_tokenizer_splits_text_as_the_tokenizer_does(tmp_path, tiny_tokenizer):
    from gguf import GGUFReader

    path = write_gguf(models(tiny_tokenizer)["llama"], tiny_tokenizer, tmp_path / "m.gguf", quant="f32")
    field = GGUFReader(str(path)).fields["tokenizer.ggml.pre"]
    pre = bytes(field.parts[field.data[0]]).decode()
    assert pre == "gpt-2"
    texts = ["print(f(x)) # don't", "a += 1; b == c", "In 2024, 12345 cats sat... (really?!)"]
    want = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [llama_cpp_ids(tiny_tokenizer, pre, t) for t in texts] == want
    assert [llama_cpp_ids(tiny_tokenizer, "default", t) for t in texts] != want  # the control: what was written


def test_pre_tokenizer_names_and_refusal():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    assert gguf_mod._pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    assert gguf_mod._pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, byte_level]}}) \
        == "smollm"
    for pre in [None, {"type": "Metaspace"}, {"type": "Sequence", "pretokenizers": [dict(digits, individual_digits=False),
                                                                                 byte_level]}]:
        with pytest.raises(ConfigError, match="GGUF readers do not know by name"):
            gguf_mod._pre_tokenizer_name({"pre_tokenizer": pre})
