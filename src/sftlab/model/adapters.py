"""LoRA family adapters through peft (LoRA, rsLoRA, DoRA)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from sftlab.config import ConfigError, LoraConfig


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """peft wrapping a transformers model, without transformers' deprecation warning for the property peft reads
    (``is_gradient_checkpointing``, renamed ``is_activation_checkpointing``): a note between the two libraries that
    nobody running sftlab can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model, cfg: LoraConfig):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA adapters; only adapter (and ``modules_to_save``)
    parameters stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    target = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    try:
        peft_cfg = PeftLoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=target,
            use_rslora=cfg.use_rslora,
            use_dora=cfg.use_dora,
            modules_to_save=list(cfg.modules_to_save) or None,
            task_type="CAUSAL_LM",
        )
        with peft_wrapping():
            return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ConfigError(f"lora: {e}") from None


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
