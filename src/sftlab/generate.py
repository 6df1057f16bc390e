"""Chat-formatted generation with a saved model: what the user looks at after training."""

from __future__ import annotations

import torch


def load_for_inference(model_dir: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.eval()
    return model, tok


def build_prompt_ids(tokenizer, prompt: str, system: str | None = None, chat: bool = True) -> list[int]:
    """Token ids of the prompt: through the saved chat template (with the generation prompt) or raw."""
    if chat and tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def generate_text(
    model,
    tokenizer,
    prompt_ids: list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Greedy (temperature 0) or sampled continuation, decoded without special tokens."""
    torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids])
    kwargs = {
        "do_sample": temperature > 0,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
