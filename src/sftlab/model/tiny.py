"""Tiny models made by the project: a byte-level BPE tokenizer trained on local text and a small Llama.

No pretrained weights can be downloaded offline, so tests build random tiny models from a config, and the
demo pretrains a tiny base on bundled general text (see ``sftlab.demo``).
"""

from __future__ import annotations

from collections.abc import Iterable

# ChatML, as used by Qwen and many others. The end-of-turn token <|im_end|> is the model's EOS, so a
# model that learns to emit it learns to stop.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (GPT-2 style pre-tokenisation) and wrap it for transformers.

    Specials: ``<|endoftext|>`` (bos/eos of plain text), ``<|im_start|>`` / ``<|im_end|>`` (ChatML turns),
    ``<|pad|>``. The tokenizer carries the ChatML chat template; eos is ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A small random-weight Llama (defaults: hidden 64, 2 layers) for tests and the tiny base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    kwargs.update(overrides)
    config = LlamaConfig(**kwargs)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
