"""Load a causal LM and its tokenizer from a local folder or a hub id (or build one from scratch)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sftlab.config import ConfigError, ModelConfig
from sftlab.model.adapters import merge_lora, peft_wrapping
from sftlab.model.gguf import gguf_path, load_gguf_model, load_gguf_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` (one slash, no leading ./ or /) may be a hub id; anything else must exist locally."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1 and not name.endswith((".json", ".yaml", ".safetensors"))


def _check_source(name: str, what: str) -> None:
    if not name:
        raise ConfigError(f"model.{what} is empty: set it to a local model folder or a hub id (e.g. Qwen/Qwen2.5-0.5B)")
    if Path(name).exists() or _looks_like_hub_id(name):
        return
    raise ConfigError(f"model path does not exist: {name} (give an existing folder or a hub id like org/name)")


def _load_error(name: str, err: Exception) -> ConfigError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    local = Path(name).exists()
    hint = (
        "check the folder holds config.json and weights"
        if local
        else "no such local folder, and the hub could not be reached or has no such repo"
    )
    return ConfigError(f"cannot load {name!r}: {first} ({hint})")


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer, with a pad token set when it has none (the loss never depends on pad ids)."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.name_or_path
    gguf = gguf_path(name, None if cfg.tokenizer else cfg.gguf_file)
    if gguf is not None:
        tok = load_gguf_tokenizer(gguf)
    else:
        _check_source(name, "tokenizer" if cfg.tokenizer else "name_or_path")
        try:
            tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise _load_error(name, e) from None
    if tok.pad_token is None:
        # Prefer a dedicated pad-like token; eos as pad is safe here because labels come from the mask,
        # never from "input_ids != pad".
        for cand in ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", tok.unk_token, tok.eos_token):
            if cand and cand in tok.get_vocab():
                tok.pad_token = cand
                break
    return tok


def pad_id_of(tokenizer) -> int:
    """A pad id: the tokenizer's pad, else eos, else 0 (the attention mask hides it either way).
    The one rule for every batch sftlab pads: training, IFD scoring, eval, generation."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def quantization_config_4bit():
    """QLoRA's base: NF4 weights, double quantisation, bf16 compute (Dettmers et al. 2023).

    Raises a ``ConfigError`` saying why when there is no CUDA GPU or no bitsandbytes.
    """
    if not torch.cuda.is_available():
        raise ConfigError("lora.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit kernels do not run on "
                          "CPU. Set lora.load_in_4bit: false to train LoRA on a full-precision base here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("lora.load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_model(cfg: ModelConfig, tokenizer, seed: int = 0, load_in_4bit: bool = False):
    """An ``AutoModelForCausalLM`` from safetensors, or a random Llama when ``from_scratch`` is set.

    ``load_in_4bit``: a 4-bit quantised base for QLoRA (CUDA only; prepared for k-bit training by peft).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    quantization = quantization_config_4bit() if load_in_4bit else None
    if quantization is not None and cfg.from_scratch is not None:
        raise ConfigError("lora.load_in_4bit needs a pretrained base (model.name_or_path), not model.from_scratch")

    if cfg.from_scratch is not None:
        kwargs = dict(cfg.from_scratch)
        kwargs.setdefault("vocab_size", len(tokenizer))
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
        kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        try:
            config = LlamaConfig(**kwargs)
        except TypeError as e:
            raise ConfigError(f"model.from_scratch: {e}") from None
        config._attn_implementation = cfg.attn_implementation
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        if cfg.dtype in DTYPES:
            model = model.to(DTYPES[cfg.dtype])
        return model
    dtype = "auto" if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    gguf = gguf_path(cfg.name_or_path, cfg.gguf_file)
    if gguf is not None and quantization is not None:
        raise ConfigError("lora.load_in_4bit needs a safetensors base: convert the GGUF file first "
                          "(sftlab model convert FILE.gguf --out DIR) and name that folder")
    if gguf is not None:
        model = load_gguf_model(gguf, None if dtype == "auto" else dtype, cfg.attn_implementation)
    else:
        model = load_pretrained(cfg, dtype, quantization)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_pretrained(cfg: ModelConfig, dtype, quantization=None):
    """``AutoModelForCausalLM.from_pretrained`` from safetensors, with user errors as ``ConfigError``."""
    from transformers import AutoModelForCausalLM

    _check_source(cfg.name_or_path, "name_or_path")
    try:
        return AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path,
            revision=cfg.revision,
            dtype=dtype,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            quantization_config=quantization,
        )
    except ImportError as e:
        raise ConfigError(f"model.attn_implementation={cfg.attn_implementation!r} is not available: {e}") from None
    except (OSError, ValueError) as e:
        raise _load_error(cfg.name_or_path, e) from None


def load_base_model(name: str, trust_remote_code: bool = False):
    """A base model named by a path, hub id or .gguf file (a LoRA adapter's base, a merge's base), float32."""
    cfg = ModelConfig(name_or_path=name, trust_remote_code=trust_remote_code)
    gguf = gguf_path(name)
    return load_gguf_model(gguf) if gguf is not None else load_pretrained(cfg, torch.float32)


def attach_adapter(base_model, adapter_dir, base_name: str = ""):
    """``PeftModel.from_pretrained(base_model, adapter_dir)``; an adapter that does not fit the base (another
    architecture or size) is a ConfigError, not a size-mismatch traceback."""
    from peft import PeftModel

    try:
        with peft_wrapping():
            return PeftModel.from_pretrained(base_model, str(adapter_dir))
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "")
        raise ConfigError(f"the LoRA adapter {adapter_dir} does not fit the base model {base_name!r} ({first}); "
                          "give the base it was trained on") from None


def load_adapter_model(adapter_dir, base: str | None = None, trust_remote_code: bool = False):
    """A LoRA adapter folder on its base (``base``, else the one named in ``adapter_config.json``)."""
    from sftlab.model.export import read_adapter_base

    base = base or read_adapter_base(Path(adapter_dir))
    if not base:
        raise ConfigError(f"the LoRA adapter {adapter_dir} does not name its base model: pass --base DIR")
    try:
        base_model = load_base_model(base, trust_remote_code=trust_remote_code)
    except ConfigError as e:
        raise ConfigError(f"the base model of the LoRA adapter {adapter_dir} cannot be loaded: {e}. Restore it, "
                          "or pass the base with --base DIR (sftlab merge)") from None
    return attach_adapter(base_model, adapter_dir, base)


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder: ``path`` itself, or ``path/final`` for a run directory; a clear error otherwise."""
    p = Path(path)
    if (p / "final").is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        p = p / "final"
    if not p.is_dir():
        raise ConfigError(f"model folder not found: {path} (give RUN/final, a run directory or a model folder)")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise ConfigError(f"{p} holds no model (no config.json or adapter_config.json); give RUN/final")
    return p


def load_for_inference(
    name: str | Path,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    merge_adapter: bool = False,
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """(model in eval mode, tokenizer): the one way sftlab loads a model to run it (generate, chat, eval,
    interpolate, export). ``name``: a model folder, a run directory (its ``final/``), a LoRA adapter folder (on
    the base its ``adapter_config.json`` names; merged with ``merge_adapter``), a .gguf file or a hub id.
    Safetensors or GGUF only; ``dtype`` "auto" keeps the saved one."""
    path = Path(name)
    if path.is_dir():
        path = resolve_model_dir(path)
        name = str(path)
    cfg = ModelConfig(name_or_path=str(name), dtype=dtype, attn_implementation=attn_implementation,
                      trust_remote_code=trust_remote_code)  # fmt: skip
    tokenizer = load_tokenizer(cfg)
    if (path / "adapter_config.json").is_file():
        model = load_adapter_model(path, trust_remote_code=trust_remote_code)
        if merge_adapter:
            model = merge_lora(model)
    else:
        model = load_model(cfg, tokenizer)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def param_numel(p) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it (its local tensor is empty)."""
    return int(getattr(p, "ds_numel", p.numel()))


def param_shape(p) -> tuple[int, ...]:
    """Shape of a parameter, also when DeepSpeed ZeRO-3 has partitioned it."""
    return tuple(getattr(p, "ds_shape", p.shape))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(param_numel(p) for p in model.parameters())
    trainable = sum(param_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, total
