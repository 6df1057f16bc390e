"""Generation tasks: batched greedy decoding with stop sequences; SQuAD EM / F1, ROUGE-L or exact match."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftlab.config import TaskConfig
from sftlab.eval.forward import end_of_turn, pad_id_of, pad_left, task_prompt_ids
from sftlab.eval.items import gold_answers
from sftlab.eval.metrics import (
    check_reply,
    compute_exact_match,
    compute_rouge_l,
    compute_strict_match,
    compute_token_f1,
)

# metric family -> {aggregate name: per-item scorer(prediction, golds)}
METRICS = {
    "squad": {"exact_match": compute_exact_match, "f1": compute_token_f1},
    "rouge_l": {"rouge_l": compute_rouge_l},
    "exact": {"exact_match": compute_strict_match},
}
REPLY_CHECKS = ("good_reply", "ended", "on_topic")  # metric family reply_check (``metrics.check_reply``)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop sequence (all of it when none occurs)."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def eos_ids_of(model, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's eos plus any in the model's generation config."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or []):
        if e not in ids:
            ids.append(int(e))
    return ids


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str],
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of prompt id lists, cut at the first stop sequence; in the input order."""
    return generate_greedy_ended(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size
    )[0]


@torch.inference_mode()
def generate_greedy_ended(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    stop: Sequence[str],
    batch_size: int = 32,
) -> tuple[list[str], list[bool]]:
    """Greedy continuations cut at the first stop sequence, and whether each ended (eos or a stop sequence)
    within ``max_new_tokens``; in the input order.

    Prompts are sorted by length and left-padded per batch; decoding of a batch ends when every row
    has produced eos or a stop string (``transformers`` ``stop_strings``) or ``max_new_tokens``.
    """
    from transformers import GenerationConfig

    model.eval()
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    eos = eos_ids_of(model, tokenizer)
    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos or None,
        stop_strings=[s for s in stop if s] or None,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out, ended = [""] * len(prompts), [False] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = pad_left([prompts[i] for i in batch], pad)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=gen_cfg,
            tokenizer=tokenizer,
        )
        new = gen[:, ids.shape[1] :].tolist()
        for i, row in zip(batch, new):
            text = tokenizer.decode(row, skip_special_tokens=True)
            out[i] = cut_at_stop(text, stop)
            ended[i] = any(t in eos for t in row) or len(out[i]) < len(text)
    return out, ended


def score_generation(model, tokenizer, items: Sequence[dict], task: TaskConfig, batch_size: int = 32) -> dict:
    """Generate an answer for every item and score it against its gold answers.

    Metric family ``task.metric``: ``squad`` -> ``exact_match`` and ``f1`` (SQuAD normalisation, max over
    golds); ``rouge_l`` -> ``rouge_l``; ``exact`` -> ``exact_match`` on whitespace-stripped strings;
    ``reply_check`` -> ``good_reply``, ``ended``, ``on_topic`` (``metrics.check_reply``, first gold = reference).
    Returns the aggregates (means over items), ``n`` and ``items`` (``prediction``, ``golds`` and the
    per-item metric values).
    """
    if not task.prompt_template:
        raise ValueError(f"task {task.name!r}: generation needs a prompt_template")
    scorers = METRICS.get(task.metric, dict.fromkeys(REPLY_CHECKS))
    prompts = [task_prompt_ids(tokenizer, task, it) for it in items]
    golds = []
    for i, item in enumerate(items):
        if task.answer_column not in item:
            raise ValueError(f"task {task.name!r}: item {i} has no answer column {task.answer_column!r}")
        golds.append(gold_answers(item[task.answer_column]))
    stop = (*task.stop, end_of_turn(tokenizer)) if task.chat else task.stop  # a chat answer ends with its turn
    preds, ended = generate_greedy_ended(
        model, tokenizer, prompts, max_new_tokens=task.max_new_tokens, stop=stop, batch_size=batch_size
    )
    results = []
    for pred, gold, end in zip(preds, golds, ended):
        row = {"prediction": pred.strip(), "golds": gold}
        if task.metric == "reply_check":
            row.update(check_reply(pred, end, gold[0]))
        else:
            row.update({name: fn(pred, gold) for name, fn in scorers.items()})
        results.append(row)
    n = len(results)
    aggregates = {name: (sum(r[name] for r in results) / n if n else 0.0) for name in scorers}
    return {**aggregates, "n": n, "items": results}
