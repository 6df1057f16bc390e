"""LoRA round trip: the saved adapter loads with plain peft, the merged model with plain transformers.

Tolerance for merged vs adapter logits: atol 1e-5 (float32; merging reorders one matmul).
"""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from sftlab.config import LoraConfig, load_config
from sftlab.model.adapters import apply_lora
from sftlab.model.export import export_model, merge_adapter
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.loop import train
from sftlab.train.run import save_final


def trained_lora(tmp_path, tiny_tokenizer, **lora):
    base_dir = tmp_path / "base"
    base = build_tiny_llama(len(tiny_tokenizer), seed=0)
    base.save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    model = apply_lora(build_tiny_llama(len(tiny_tokenizer), seed=0), LoraConfig(enabled=True, r=4, alpha=8, **lora))
    model.base_model.model.config._name_or_path = str(base_dir)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    rng = random.Random(0)
    ids = [[rng.randrange(10, len(tiny_tokenizer)) for _ in range(12)] for _ in range(8)]
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids, "length": [12] * 8})
    cfg = load_config(None, ["train.progress=false", "train.max_steps=3", "train.lr=1e-2", "train.micro_batch_size=4"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(cfg, model, tiny_tokenizer, ds, output_dir=tmp_path / "run")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)  # only adapters move
    save_final(model, tiny_tokenizer, tmp_path / "run" / "final")
    return model, base_dir, tmp_path / "run" / "final"


def test_adapter_round_trip_with_plain_peft_and_merge(tmp_path, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, base_dir, final = trained_lora(tmp_path, tiny_tokenizer)
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    x = torch.tensor([[5, 17, 33, 8, 99, 120]])
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=x).logits
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(final)).eval()
        torch.testing.assert_close(loaded(input_ids=x).logits, ref, rtol=0, atol=0)
        merged_dir = merge_adapter(final, tmp_path / "merged")
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=x).logits, ref, rtol=0, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        assert not torch.allclose(base(input_ids=x).logits, ref, atol=1e-4)  # the adapter did change the model


def test_dora_rslora_train_and_export(tmp_path, tiny_tokenizer):
    model, _, final = trained_lora(tmp_path, tiny_tokenizer, use_dora=True, use_rslora=True)
    out = export_model(final, tmp_path / "export")
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()


def test_qlora_on_cpu_is_a_clear_error(tmp_path, capsys):
    import pytest

    from sftlab.cli import main

    if torch.cuda.is_available():
        pytest.skip("CUDA present: QLoRA may run here")
    cfg = tmp_path / "q.yaml"
    cfg.write_text("model: {name_or_path: org/model}\nlora: {enabled: true, load_in_4bit: true}\n"
                   f"data: {{sources: [{{path: x.jsonl}}]}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    code = main(["train", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs a CUDA GPU" in err[0], err


def test_lora_init_is_decided_by_train_seed_alone(tmp_path, tiny_tokenizer):
    """The adapters' random start depends on train.seed, not on what the process drew before."""
    from sftlab.train.run import load_run_model

    base_dir = tmp_path / "base"
    build_tiny_llama(len(tiny_tokenizer), seed=0).save_pretrained(base_dir)

    def lora_a(seed: int, draws: int) -> dict:
        torch.rand(draws)  # some earlier, unrelated use of the global RNG
        cfg = load_config(None, [f"model.name_or_path={base_dir}", "lora.enabled=true", "lora.r=4",
                                 f"train.seed={seed}"])  # fmt: skip
        model = load_run_model(cfg, tiny_tokenizer)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a, b, c = lora_a(0, 3), lora_a(0, 17), lora_a(1, 3)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_peft_wrapping_hides_only_the_renamed_property_warning(tmp_path, tiny_tokenizer):
    import warnings

    from sftlab.model.adapters import peft_wrapping
    from sftlab.model.load import attach_adapter

    model = build_tiny_llama(len(tiny_tokenizer), seed=0)
    if not hasattr(model, "is_activation_checkpointing"):
        pytest.skip("this transformers has no is_activation_checkpointing: nothing is deprecated")
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):  # the control: it does warn outside
        model.is_gradient_checkpointing  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with peft_wrapping():
            model.is_gradient_checkpointing  # noqa: B018
        wrapped = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
        wrapped.save_pretrained(tmp_path / "adapter")
        attach_adapter(build_tiny_llama(len(tiny_tokenizer), seed=0), tmp_path / "adapter")
    with pytest.warns(FutureWarning, match="something else"), peft_wrapping():
        warnings.warn("something else", FutureWarning, stacklevel=1)  # other warnings still show


def moved(model):
    """Every trainable parameter moved, as training would move it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("extra", [{"modules_to_save": ("embed_tokens",)}, {"target_modules": ("embed_tokens", "q_proj")}])
def test_saved_adapter_with_embeddings_reloads_equal_without_the_base_matrix(tmp_path, tiny_tokenizer, extra):
    from safetensors.torch import load_file

    from sftlab.model.load import attach_adapter

    vocab = len(tiny_tokenizer)
    model = apply_lora(build_tiny_llama(vocab, seed=0), LoraConfig(enabled=True, r=4, alpha=8, dropout=0, **extra))
    moved(model)
    final = save_final(model.eval(), tiny_tokenizer, tmp_path / "final")
    keys = set(load_file(final / "adapter_model.safetensors"))
    assert not any("base_layer" in k for k in keys)  # the unchanged base embedding stays with the base
    assert any("embed_tokens" in k for k in keys)  # what was trained of it is saved
    loaded = attach_adapter(build_tiny_llama(vocab, seed=0), final).eval()
    x = torch.tensor([[5, 17, 33, 8, 99, 120]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, model(input_ids=x).logits)


@pytest.mark.parametrize(("target", "untied"), [(("embed_tokens", "q_proj"), True), (("lm_head", "q_proj"), True),
                                               (("q_proj",), False)])  # the control: a tied model stays tied
def test_merging_lora_on_a_tied_embedding_keeps_the_trained_model(tmp_path, tiny_tokenizer, target, untied):
    from transformers import AutoModelForCausalLM

    from sftlab.model.adapters import merge_lora, tied_embeddings

    vocab = len(tiny_tokenizer)
    model = apply_lora(build_tiny_llama(vocab, seed=0), LoraConfig(enabled=True, r=4, alpha=8, dropout=0,
                                                                    target_modules=target))
    assert tied_embeddings(model.get_base_model())
    moved(model)
    x = torch.tensor([[5, 17, 33, 8, 99, 120]])
    with torch.no_grad():
        ref = model.eval()(input_ids=x).logits
        merged = merge_lora(model)
        assert tied_embeddings(merged) != untied and merged.config.tie_word_embeddings != untied
        torch.testing.assert_close(merged(input_ids=x).logits, ref, rtol=0, atol=1e-5)
        merged.save_pretrained(tmp_path / "merged")
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(again(input_ids=x).logits, ref, rtol=0, atol=1e-5)
