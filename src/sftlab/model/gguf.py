"""GGUF in and out: load a ``.gguf`` file as a plain transformers model, and write a model as GGUF.

In: transformers dequantises the file (``from_pretrained(folder, gguf_file=...)``, needs the ``gguf``
package); the model it returns keeps a GGUF ``quantization_config`` that refuses ``save_pretrained``, so its
weights are copied into a model built from the same config without it. The tokenizer and chat template come
from the file. From then on the model trains like any other.

Out: the ``gguf`` library writes the file: llama.cpp's tensor names (``gguf.get_tensor_name_map``), its
hyperparameter keys, the byte-level BPE vocabulary with merges, special tokens and the chat template
(``gguf.SpecialVocab``). Llama's q / k projections are permuted the way llama.cpp's converter does (rotary
halves interleaved); transformers' GGUF loader undoes it. Families: ``llama`` (SmolLM, Llama 2/3 without
rope scaling, Mistral-like) and ``qwen2``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from sftlab.config import ConfigError

QUANTS = ("f32", "f16", "bf16", "q8_0")
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def is_gguf(name: str | os.PathLike | None) -> bool:
    return bool(name) and str(name).lower().endswith(".gguf")


def gguf_path(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a model setting names (``x.gguf``, or a folder plus ``gguf_file``), else None."""
    if gguf_file:
        path = Path(name_or_path) / gguf_file if name_or_path else Path(gguf_file)
    elif is_gguf(name_or_path):
        path = Path(name_or_path)
    else:
        return None
    if not path.is_file():
        raise ConfigError(f"GGUF file not found: {path} (give an existing .gguf file)")
    return path


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError("reading or writing GGUF files needs the gguf package: pip install gguf") from None


def load_gguf_tokenizer(path: Path):
    """The tokenizer (vocabulary, merges, special tokens, chat template) embedded in a GGUF file."""
    from transformers import AutoTokenizer

    _require_gguf()
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot read the tokenizer of {path}: {e}") from None


def load_gguf_model(path: Path, dtype: torch.dtype | None = torch.float32, attn_implementation: str = "sdpa"):
    """A plain (trainable, saveable) causal LM with the dequantised weights of a GGUF file."""
    from transformers import AutoModelForCausalLM

    _require_gguf()
    try:
        quantised = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ConfigError(f"cannot load {path}: {e} (transformers reads GGUF files of common families only)") from None
    config = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    config = type(quantised.config).from_dict(config)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"model.attn_implementation={attn_implementation!r} is not available: {e}") from None
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    model.config._name_or_path = model.name_or_path = str(path)  # what a LoRA adapter records as its base
    del quantised
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model


def convert_gguf(path: Path, out_dir: Path) -> Path:
    """Write a GGUF model as a new Hugging Face folder (safetensors, tokenizer, chat template, generation
    config), atomically: ``out_dir.tmp`` first, renamed when complete. An existing non-empty ``out_dir`` is
    refused, never replaced."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not empty: pick a new folder for the converted model")
    tokenizer = load_gguf_tokenizer(path)
    model = load_gguf_model(path)
    model.config._name_or_path = model.name_or_path = out_dir.name
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write {out_dir}: {e.strerror or e}") from None
    return out_dir


# ------------------------------------------------------------------------------------------ export


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's layout of a Llama q / k projection: the two rotary halves of each head interleaved.

    >>> permute_rotary(np.arange(4).reshape(4, 1), 1)[:, 0].tolist()
    [0, 2, 1, 3]
    """
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _check_exportable(config) -> str:
    arch = config.model_type
    if arch not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports the {', '.join(ARCHITECTURES)} families; this model is {arch!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        if arch == "llama":
            raise ConfigError("GGUF export of Llama models with attention or MLP biases is not supported yet")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"GGUF export of rope scaling {rope.get('rope_type')!r} is not supported yet")
    return arch


def _vocabulary(tokenizer, n_vocab: int, spec: dict) -> tuple[list[str], list[int]]:
    """Tokens in id order and their GGUF types, padded to the embedding's rows with unused tokens
    (``spec``: the tokenizer's ``tokenizer.json``)."""
    model = spec.get("model", {})
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ConfigError("GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM style); "
                          f"this tokenizer is {model.get('type')!r}")
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    if max(vocab.values()) >= n_vocab:
        raise ConfigError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [TOKEN_UNUSED] * n_vocab
    for token, i in vocab.items():
        tokens[i] = token
        types[i] = TOKEN_NORMAL if token not in added else (
            TOKEN_CONTROL if added[token].get("special") else TOKEN_USER_DEFINED)
    return tokens, types


def _pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name of the pre-tokenizer (how text is split before BPE). A split regex is matched against the
    names transformers' GGUF reader knows. Without one: byte-level's own regex is GPT-2's ("gpt-2"), after single
    digits split off SmolLM's ("smollm"). llama.cpp's "default" is neither (it splits punctuation runs and groups of
    three digits first), so it is never written: a tokenizer of another kind is refused."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre else []
    patterns = {s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"} - {None}
    if not patterns:
        kinds = [s.get("type") for s in steps]
        if kinds and kinds[-1] == "ByteLevel" and steps[-1].get("use_regex", True):
            if kinds == ["ByteLevel"]:
                return "gpt-2"
            if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
                return "smollm"
        raise ConfigError(f"GGUF export: this tokenizer splits text with {' + '.join(kinds) or 'no pre-tokenizer'}, "
                          "which GGUF readers do not know by name; the exported file would tokenise differently")
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        GGUF_PRE_TOKENIZER_SPLITS = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if regex in patterns:
            return name
    raise ConfigError(f"GGUF export: this tokenizer splits text with {sorted(patterns)[0]!r}, which GGUF readers "
                      "do not know by name; the exported file would tokenise differently")


def _encode_tensor(data: np.ndarray, quant: str):
    """(array, raw GGML type or None) for one tensor; 1-D tensors (norms, biases) stay float32."""
    from gguf import GGMLQuantizationType, quants

    if data.ndim < 2 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "f16":
        return data.astype(np.float16), None
    if quant == "bf16":
        return quants.quantize(data.astype(np.float32), GGMLQuantizationType.BF16), GGMLQuantizationType.BF16
    if data.shape[-1] % 32:  # q8_0 blocks are 32 values of a row; such a tensor stays f16
        return data.astype(np.float16), None
    return quants.quantize(data.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def write_gguf(model, tokenizer, out_file: str | Path, quant: str = "f16", name: str | None = None) -> Path:
    """Write ``model`` (a plain causal LM of a supported family) and its tokenizer as one GGUF file,
    atomically (``out_file.tmp`` first)."""
    _require_gguf()
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f"unknown GGUF type {quant!r}: use one of {', '.join(QUANTS)}")
    cfg = model.config
    arch = _check_exportable(cfg)
    out_file = Path(out_file)
    tmp = out_file.with_name(out_file.name + ".tmp")
    n_layer, n_head = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    tied = bool(getattr(cfg, "tie_word_embeddings", False))

    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch])])
    writer.add_name(name or out_file.stem)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != cfg.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(n_vocab)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tokenizer.save_pretrained(str(folder))
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tokens, types = _vocabulary(tokenizer, n_vocab, spec)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
        if special.chat_template is None and getattr(tokenizer, "chat_template", None):
            special.chat_template = tokenizer.chat_template
        special.add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch]), n_layer)
    for hf_name, data in state.items():
        if tied and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ConfigError(f"GGUF export: no GGUF name for tensor {hf_name!r}")
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_rotary(data, n_head)
        elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_rotary(data, n_kv)
        array, raw = _encode_tensor(data, quant)
        writer.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=raw)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {out_file}: {e.strerror or e}") from None
    return out_file
