"""Model-facing helpers: prompt / continuation tokenisation and batched continuation log-likelihoods."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from sftlab.model.load import pad_id_of  # noqa: F401 (the one pad rule; eval modules import it from here)

# The sequences scored for one item: the shared context and one target token list per continuation.
ContinuationSet = tuple[list[int], list[list[int]]]
# (forward row, position of the logits predicting the first target, item, continuation, target ids)
Read = tuple[int, int, int, int, list[int]]


def encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special_prefix_ids(tokenizer) -> list[int]:
    """Ids the tokenizer puts *before* text by default (Llama's ``<s>``); ``[]`` for GPT-2 / Qwen style.

    Eval inputs start the way ``tokenizer(text)`` starts them, which is how a plain prompt + completion
    is tokenised in training; special tokens a tokenizer appends (an eos) are left out.
    """
    plain = encode_plain(tokenizer, "a")
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def count_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def chat_prompt(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """A user turn (or a list of messages to continue) through the tokenizer's chat template, ending in the
    generation prompt: what the model sees before it answers in a chat. ``system`` goes in front when the
    messages have no system turn."""
    if not tokenizer.chat_template:
        raise ValueError("chat: true needs a tokenizer with a chat template (or set chat: false)")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """The marker that closes an assistant turn in the tokenizer's chat template (``<|im_end|>``,
    ``<|eot_id|>``, ...; the eos token when the template names none)."""
    from sftlab.data.templates import end_of_turn_strings

    found = end_of_turn_strings(tokenizer, tokenizer.chat_template or "")
    if not found:
        raise ValueError("the chat template has no end-of-turn marker and the tokenizer no eos token")
    return found[0]


def task_prompt(tokenizer, task, record: dict) -> str:
    """A task item's prompt: the filled ``prompt_template``, as a chat user turn with the generation prompt
    when ``task.chat`` (see ``chat_prompt``)."""
    from sftlab.eval.items import render_prompt

    text = render_prompt(task.prompt_template, record)
    return chat_prompt(tokenizer, text, task.system) if task.chat else text


def task_prompt_ids(tokenizer, task, record: dict) -> list[int]:
    """Token ids of ``task_prompt``: a chat render as is (the template writes its own bos), plain text
    after the ids the tokenizer puts before text."""
    prefix = [] if task.chat else special_prefix_ids(tokenizer)
    return prefix + encode_plain(tokenizer, task_prompt(tokenizer, task, record))


def encode_continuations(tokenizer, prompt: str, continuations: Sequence[str], prefix: bool = True) -> ContinuationSet:
    """Split ``prompt + continuation`` token ids into a context shared by all continuations and targets.

    Each ``prompt + continuation`` is tokenised *as one string*, so the target ids are exactly the ids a
    model trained on that text saw. Where BPE merges across the boundary (a prompt ending in a space,
    say), the ids of the prompt alone are not a prefix of the joint ids; the shared context then stops
    at the longest prefix common to the prompt and every joint tokenisation, and the targets start
    with the re-merged prompt tail. Comparing target log-likelihoods is then comparing the joint
    probabilities of the full strings, because the context is the same for every continuation.

    ``prefix``: start with the ids the tokenizer puts before plain text (bos); off for a prompt rendered by
    a chat template, which writes its own.

    Returns ``(context_ids, [target_ids per continuation])``; every target list is non-empty.
    """
    prefix = special_prefix_ids(tokenizer) if prefix else []
    prompt_ids = prefix + encode_plain(tokenizer, prompt)
    joints = [prefix + encode_plain(tokenizer, prompt + c) for c in continuations]
    shared = min(count_common_prefix(prompt_ids, j) for j in joints)
    if shared == 0:
        raise ValueError("label scoring needs a non-empty prompt (or a tokenizer that adds a bos token)")
    targets = [j[shared:] for j in joints]
    if any(not t for t in targets) or len({tuple(t) for t in targets}) < len(targets):
        raise ValueError(
            f"label continuations {list(continuations)!r} must be non-empty and tokenise differently"
        )
    return prompt_ids[:shared], targets


def supports_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` accepts ``logits_to_keep`` (computing the LM head only where needed)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to ``input_ids`` and ``attention_mask``, both (B, max_len) int64."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists (for generation: every row's next token comes at the same column)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _plan_rows(sets: Sequence[ContinuationSet]) -> tuple[list[list[int]], list[Read]]:
    """Forward rows and reads for continuation scoring.

    Scoring target t after context c needs the input ``c + t[:-1]`` and the logits at positions
    ``len(c) - 1 ...``. Within an item, an input that is a prefix of another item input shares that
    row (causal attention: a prefix's logits do not depend on what follows), so single-token labels
    such as " positive" / " negative" cost one forward row per item, not one per label.

    Returns the rows (id lists) and one ``Read`` per (item, continuation).
    """
    rows: list[list[int]] = []
    reads: list[Read] = []
    for item, (context, targets) in enumerate(sets):
        inputs = [context + t[:-1] for t in targets]
        cover = {}  # id tuple of the longest input that each input is a prefix of -> row index
        for j, inp in enumerate(inputs):
            longest = max((o for o in inputs if o[: len(inp)] == inp), key=len)
            key = tuple(longest)
            if key not in cover:
                cover[key] = len(rows)
                rows.append(longest)
            reads.append((cover[key], len(context) - 1, item, j, targets[j]))
    return rows, reads


@torch.inference_mode()
def score_continuation_sets(
    model, sets: Sequence[ContinuationSet], *, batch_size: int = 32, pad_id: int = 0
) -> list[list[tuple[float, int]]]:
    """Sum of target-token log-probs for every continuation of every item, batched.

    ``sets[i] = (context_ids, [targets_j])``; returns ``out[i][j] = (sum log p(targets_j | context), len)``.
    Rows are sorted by length (less padding), right-padded, and only the logits at the read positions
    go through log-softmax (in float32).
    """
    rows, reads = _plan_rows(sets)
    by_row: dict[int, list[Read]] = {}
    for read in reads:
        by_row.setdefault(read[0], []).append(read)
    out: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(t) for _, t in sets]
    keep = supports_logits_to_keep(model)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = pad_right([rows[r] for r in batch], pad_id)
        # (batch row, position, target id, item, continuation) for every target token in the batch.
        cells = [
            (b, pos + k, tok, item, j)
            for b, r in enumerate(batch)
            for (_, pos, item, j, targets) in by_row[r]
            for k, tok in enumerate(targets)
        ]
        b_idx = torch.tensor([c[0] for c in cells])
        p_idx = torch.tensor([c[1] for c in cells])
        kwargs = {}
        if keep:
            # The LM head runs only on the positions some read needs (a large share of the FLOPs of a
            # small model with a big vocabulary).
            needed = torch.unique(p_idx)
            kwargs["logits_to_keep"] = needed.to(device)
            p_idx = torch.searchsorted(needed, p_idx)
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs
        ).logits
        picked = logits[b_idx.to(device), p_idx.to(device)].float()  # (cells, vocab)
        logp = torch.log_softmax(picked, dim=-1)
        tgt = torch.tensor([c[2] for c in cells], device=device)
        token_lp = logp.gather(1, tgt[:, None])[:, 0].tolist()
        sums: dict[tuple[int, int], list] = {}
        for (_, _, _, item, j), lp in zip(cells, token_lp):
            acc = sums.setdefault((item, j), [0.0, 0])
            acc[0] += lp
            acc[1] += 1
        for (item, j), (total, count) in sums.items():
            out[item][j] = (total, count)
    return out
