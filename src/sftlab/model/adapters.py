"""LoRA family adapters through peft (LoRA, rsLoRA, DoRA)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

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


def _own_layer(module):
    """The plain layer under a peft adapter layer (``module`` itself when it has none)."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def tied_embeddings(model) -> bool:
    """Whether ``model``'s input embedding and LM head share one weight matrix (adapter layers looked through)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return inp is not None and out is not None and _own_layer(inp).weight is _own_layer(out).weight


def untie_embeddings(model) -> None:
    """Give the LM head its own copy of the tied embedding matrix and say so in the config: the model computes the
    same, and the two can now differ (a merged adapter that changed one of them)."""
    head = _own_layer(model.get_output_embeddings())
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for config in (model.config, model.config.get_text_config()):  # often one object: set twice, harmless
        config.tie_word_embeddings = False


def merge_lora(model):
    """``merge_and_unload`` of a peft model. A LoRA layer on a tied input embedding or LM head trains a change to
    that one alone; merged into the shared matrix it would change the other too (another model than the one
    trained and scored), so the two are untied first."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = model.get_base_model()
    ends = [base.get_input_embeddings(), base.get_output_embeddings()]
    if any(isinstance(m, BaseTunerLayer) for m in ends) and tied_embeddings(base):
        untie_embeddings(base)
    return model.merge_and_unload()
