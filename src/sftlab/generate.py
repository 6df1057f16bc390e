"""Generation with a saved model through its saved chat template: one prompt, or a file of prompts to JSONL.

``sftlab generate --model DIR "prompt"`` prints one reply; ``--prompts FILE`` generates for every prompt
of a .txt (one per line) or .jsonl file (``prompt`` text, or ``messages`` to continue; other fields are
copied to the output) in length-sorted, left-padded batches, and writes JSONL with a ``completion`` field.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sftlab.config import ConfigError
from sftlab.console import console, say
from sftlab.model.load import load_for_inference as load_model_for_inference
from sftlab.model.load import resolve_model_dir  # noqa: F401 (sftlab chat)


def load_for_inference(model_dir: str | Path, trust_remote_code: bool = False):
    """(model in eval mode, tokenizer) to generate with, on the GPU when there is one (``model.load``)."""
    return load_model_for_inference(model_dir, trust_remote_code=trust_remote_code,
                                    device="cuda" if torch.cuda.is_available() else None)  # fmt: skip


def build_prompt_ids(tokenizer, prompt: str | list[dict], system: str | None = None, chat: bool = True) -> list[int]:
    """Token ids of a prompt: through the saved chat template (with the generation prompt) or raw.

    ``prompt`` is a user message, or a list of messages to continue (``system`` is added in front when the
    list has no system message).
    """
    if chat and tokenizer.chat_template:
        from sftlab.eval.forward import chat_prompt

        return tokenizer(chat_prompt(tokenizer, prompt, system), add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise ConfigError("a list of messages needs a chat template; give plain prompts with --raw")
    return tokenizer(prompt)["input_ids"]


def generate_batch(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[int]]:
    """New token ids for every prompt (in input order; eos and what follows removed).

    Prompts are sorted by length and left-padded per batch; temperature 0 is greedy. With sampling, the
    seed fixes the result for a given batch size.
    """
    from transformers import GenerationConfig

    from sftlab.eval.forward import pad_id_of, pad_left
    from sftlab.eval.generation import eos_ids_of

    torch.manual_seed(seed)
    eos = eos_ids_of(model, tokenizer)
    gen_cfg = GenerationConfig(
        do_sample=temperature > 0,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id_of(tokenizer),
        eos_token_id=eos or None,
        **({"temperature": temperature, "top_p": top_p} if temperature > 0 else {}),
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress, console=console(stderr=True)) as bar:
        task = bar.add_task("generating", total=len(prompts))
        for batch in batches:
            ids, mask = pad_left([prompts[i] for i in batch], pad_id_of(tokenizer))
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
                )
            for i, row in zip(batch, gen[:, ids.shape[1] :].tolist()):
                cut = next((k for k, t in enumerate(row) if t in eos), len(row))
                out[i] = row[:cut]
            bar.advance(task, len(batch))
    return out


def generate_text(
    model,
    tokenizer,
    prompt_ids: list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """One continuation, decoded without special tokens."""
    new = generate_batch(
        model, tokenizer, [prompt_ids], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )[0]
    return tokenizer.decode(new, skip_special_tokens=True)


def read_prompts(path: str | Path) -> list[dict]:
    """Records of a prompts file: .txt (one prompt per non-empty line) or .jsonl (``prompt`` or ``messages``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file not found: {p}")
    lines = p.read_text(encoding="utf-8").splitlines()
    if p.suffix != ".jsonl":
        records = [{"prompt": line} for line in lines if line.strip()]
    else:
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p}:{n}: not valid JSON ({e})") from None
            ok = isinstance(rec, dict) and (
                isinstance(rec.get("prompt"), str)
                or (isinstance(rec.get("messages"), list) and all(isinstance(m, dict) for m in rec["messages"]))
            )
            if not ok:
                raise ConfigError(
                    f'{p}:{n}: each line needs a "prompt" string or a "messages" list, e.g. '
                    '{"prompt": "Give three tips for staying healthy."}'
                )
            records.append(rec)
    if not records:
        raise ConfigError(f"{p} holds no prompts")
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (RUN/final), run directory or LoRA adapter")
    parser.add_argument("prompt", nargs="?", help="user message (or use --prompts FILE)")
    parser.add_argument("--prompts", metavar="FILE", help=".txt (one prompt per line) or .jsonl (prompt / messages)")
    parser.add_argument("--out", metavar="FILE", help="with --prompts: JSONL output (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text as is")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.prompts is None):
        raise ConfigError("give either a prompt or --prompts FILE (not both)")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
    records = read_prompts(args.prompts) if args.prompts else None
    model, tok = load_for_inference(args.model)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if records is None:
        ids = build_prompt_ids(tok, args.prompt, system=args.system, chat=not args.raw)
        say(generate_text(model, tok, ids, **kw))
        return 0
    t0 = time.perf_counter()
    prompts = [
        build_prompt_ids(
            tok, r.get("messages") or r["prompt"], system=r.get("system") or args.system, chat=not args.raw
        )
        for r in records
    ]
    new = generate_batch(model, tok, prompts, batch_size=args.batch_size, progress=True, **kw)
    rows = [
        json.dumps({**r, "completion": tok.decode(ids, skip_special_tokens=True)}, ensure_ascii=False) + "\n"
        for r, ids in zip(records, new)
    ]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(rows), encoding="utf-8")
        os.replace(tmp, out)
    else:
        say("".join(rows), end="")
    say(
        f"generated {len(rows)} completions ({sum(map(len, new)):,} new tokens) in "
        f"{time.perf_counter() - t0:.1f} s -> {args.out or 'standard output'}",
        stderr=True,
    )
    return 0
