"""Reply loss: how well a model predicts reference replies to held-out prompts (instruction following).

Each item's prompt (a chat user turn with ``chat: true``) is the context; the reference reply (plus the
template's end-of-turn marker in chat) is the target. The item's value is the reply's mean negative log-
likelihood per token; the task's ``reply_nll`` is the mean over items, so each prompt counts once whatever
its reply's length. Lower is better; the paired comparison with the base is over the same items.
"""

from __future__ import annotations

from collections.abc import Sequence

from sftlab.config import TaskConfig
from sftlab.eval.forward import encode_continuations, end_of_turn, pad_id_of, score_continuation_sets, task_prompt


def score_reply_loss(model, tokenizer, items: Sequence[dict], task: TaskConfig, batch_size: int = 32) -> dict:
    """``{"reply_nll", "n", "items": [{"nll", "tokens"}]}`` for the reference replies in ``task.answer_column``."""
    if not task.prompt_template:
        raise ValueError(f"task {task.name!r}: reply_loss needs a prompt_template, e.g. '{{prompt}}'")
    suffix = end_of_turn(tokenizer) if task.chat else ""
    sets = []
    for i, item in enumerate(items):
        reply = item.get(task.answer_column)
        if not isinstance(reply, str) or not reply:
            raise ValueError(f"task {task.name!r}: item {i} has no reference reply in {task.answer_column!r}")
        sets.append(encode_continuations(tokenizer, task_prompt(tokenizer, task, item), [reply + suffix],
                                         prefix=not task.chat))
    model.eval()
    scores = score_continuation_sets(model, sets, batch_size=batch_size, pad_id=pad_id_of(tokenizer))
    rows = [{"nll": -total / count, "tokens": count} for ((total, count),) in scores]
    n = len(rows)
    return {"reply_nll": sum(r["nll"] for r in rows) / n if n else 0.0, "n": n, "items": rows}
