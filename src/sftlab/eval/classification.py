"""Classification by label scoring: the log-likelihood of each label continuation after the prompt, argmax."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sftlab.config import TaskConfig
from sftlab.eval.forward import (
    encode_continuations,
    end_of_turn,
    pad_id_of,
    score_continuation_sets,
    task_prompt,
)
from sftlab.eval.items import label_key
from sftlab.eval.metrics import compute_accuracy, compute_ece, compute_macro_f1


def normalize_scores(logliks: Sequence[float]) -> list[float]:
    """Softmax of label log-likelihoods: the model's probability of each label given one of them is said."""
    top = max(logliks)
    exps = [math.exp(x - top) for x in logliks]
    total = sum(exps)
    return [e / total for e in exps]


def check_classification_task(task: TaskConfig) -> None:
    """Raise ValueError when the task cannot be label-scored (no template, fewer than two labels)."""
    if not task.prompt_template:
        raise ValueError(
            f"task {task.name!r}: classification needs a prompt_template, "
            "e.g. 'Review: {sentence}\\nSentiment:'"
        )
    if len(task.label_map) < 2:
        raise ValueError(f"task {task.name!r}: classification needs a label_map with at least two labels")


def score_classification(
    model, tokenizer, items: Sequence[dict], task: TaskConfig, batch_size: int = 32
) -> dict:
    """Label-score every item; per-item results and the aggregate metrics.

    For each item the prompt is ``render_prompt(task.prompt_template, item)`` and label L is scored as
    the summed log-prob of its continuation ``task.label_map[L]`` (see ``encode_continuations``). With
    ``task.chat`` the prompt is a user turn through the chat template (generation prompt included) and
    the continuation is the label plus the template's end-of-turn marker: the whole reply. The
    prediction is the argmax; ``probs`` is the softmax over the labels' log-likelihoods (used for ECE).

    Returns ``{"accuracy", "macro_f1", "ece", "n", "labels", "items"}`` where ``items[i]`` has ``pred``,
    ``gold`` (label_map keys), ``correct`` (0/1), ``confidence`` (max prob), ``probs`` and ``logliks``
    (label -> value).
    """
    check_classification_task(task)
    model.eval()
    labels = list(task.label_map)
    suffix = end_of_turn(tokenizer) if task.chat else ""  # a chat reply is the label and the end of the turn
    continuations = [task.label_map[lab] + suffix for lab in labels]
    golds = []
    for i, item in enumerate(items):
        if task.label_column not in item:
            raise ValueError(f"task {task.name!r}: item {i} has no label column {task.label_column!r}")
        gold = label_key(item[task.label_column])
        if gold not in task.label_map:
            raise ValueError(
                f"task {task.name!r}: item {i} has label {gold!r}, not a key of label_map {labels}"
            )
        golds.append(gold)
    sets = [encode_continuations(tokenizer, task_prompt(tokenizer, task, it), continuations, prefix=not task.chat)
            for it in items]
    scores = score_continuation_sets(model, sets, batch_size=batch_size, pad_id=pad_id_of(tokenizer))
    results = []
    for gold, item_scores in zip(golds, scores):
        logliks = [s for s, _ in item_scores]
        probs = normalize_scores(logliks)
        best = max(range(len(labels)), key=lambda j: logliks[j])
        results.append(
            {
                "pred": labels[best],
                "gold": gold,
                "correct": int(labels[best] == gold),
                "confidence": probs[best],
                "probs": dict(zip(labels, probs)),
                "logliks": dict(zip(labels, logliks)),
            }
        )
    preds = [r["pred"] for r in results]
    return {
        "accuracy": compute_accuracy(preds, golds),
        "macro_f1": compute_macro_f1(preds, golds, labels),
        "ece": compute_ece([r["confidence"] for r in results], [r["correct"] for r in results]),
        "n": len(results),
        "labels": labels,
        "items": results,
    }
