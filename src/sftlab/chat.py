"""``sftlab chat``: a multi-turn conversation in the terminal, rendered with the model's saved chat template.

Each turn renders the whole conversation so far (``apply_chat_template`` with the generation prompt), so
the model sees exactly what training showed it. ``/reset`` starts over, ``/exit`` or Ctrl-D ends. When the
conversation outgrows the model's context, the oldest turns are dropped (and that is said).
"""

from __future__ import annotations

import argparse
import sys

import torch

from sftlab.config import ConfigError
from sftlab.console import say

HELP = "/reset clears the conversation, /exit (or Ctrl-D) ends it"


def context_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def fit_messages(tokenizer, messages: list[dict], budget: int | None) -> tuple[list[int], list[dict], int]:
    """(prompt ids, messages kept, turns dropped): the oldest user/assistant pairs go first (the system
    message and the last user message stay) until the prompt fits in ``budget`` tokens."""
    from sftlab.generate import build_prompt_ids

    dropped = 0
    while True:
        ids = build_prompt_ids(tokenizer, messages)
        system = 1 if messages and messages[0]["role"] == "system" else 0
        if budget is None or len(ids) <= budget or len(messages) - system <= 1:
            return ids, messages, dropped
        messages = messages[:system] + messages[system + 2 :]
        dropped += 1


def reply(
    model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_p: float, stream: bool, out
) -> str:
    """Generate one reply (printed as it comes when ``stream``) and return its text."""
    from transformers import GenerationConfig, TextStreamer

    from sftlab.eval.forward import pad_id_of
    from sftlab.eval.generation import eos_ids_of

    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    gen_cfg = GenerationConfig(
        do_sample=temperature > 0,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id_of(tokenizer),
        eos_token_id=eos_ids_of(model, tokenizer) or None,
        **({"temperature": temperature, "top_p": top_p} if temperature > 0 else {}),
    )
    streamer = None
    if stream:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        streamer.on_finalized_text = lambda text, stream_end=False: say(
            text, end="" if not stream_end else "\n", file=out, flush=True
        )
    with torch.inference_mode():
        gen = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg, streamer=streamer
        )
    text = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    if not stream:
        say(text, file=out, flush=True)
    return text


def chat_loop(
    model,
    tokenizer,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    stream: bool = True,
    read=input,
    out=sys.stdout,
) -> int:
    """Read a user message, reply, repeat. Returns the number of replies given."""
    if not tokenizer.chat_template:
        raise ConfigError("this model's tokenizer has no chat template; use sftlab generate --raw for plain text")
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    limit = context_limit(model)
    replies = 0
    while True:
        try:
            text = read("you> ")
        except EOFError:
            say(file=out)
            break
        except KeyboardInterrupt:
            say(file=out)
            break
        command = text.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            messages = list(start)
            say("(conversation cleared)", file=out, flush=True)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": text})
        budget = None if limit is None else max(1, limit - max_new_tokens)
        ids, messages, dropped = fit_messages(tokenizer, messages, budget)
        if dropped:
            say(f"({dropped} oldest turn(s) dropped to fit the {limit}-token context)", file=out, flush=True)
        say("assistant> ", end="", file=out, flush=True)
        try:
            answer = reply(
                model,
                tokenizer,
                ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stream=stream,
                out=out,
            )
        except KeyboardInterrupt:
            say("\n(interrupted; the reply is not kept)", file=out, flush=True)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})
        replies += 1
    return replies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (RUN/final), run directory or LoRA adapter")
    parser.add_argument("--system", help="system prompt at the start of the conversation")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the session")
    parser.add_argument("--no-stream", action="store_true", help="print each reply when it is complete")


def run(args: argparse.Namespace) -> int:
    from sftlab.generate import load_for_inference, resolve_model_dir

    path = resolve_model_dir(args.model)
    model, tok = load_for_inference(path)
    torch.manual_seed(args.seed)
    say(f"chatting with {path} ({HELP})", flush=True)
    chat_loop(
        model,
        tok,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stream=not args.no_stream,
    )
    return 0
