"""Eval task kinds as objects, in one registry: how a kind loads its items, scores a model (and its base),
compares the two, which metrics it headlines and which per-item values back them.

    kind = KINDS[task.kind]
    items = kind.load(task)
    scored = kind.score_pair(model, tokenizer, base, base_tokenizer, task, items, batch_size, cache)
    metrics = kind.compare(scored, task, n_boot)          # scorecard entries (eval/entries.py)
    kind.headline(task), kind.item_values(task, scored.model)

``lm_eval`` (lm-evaluation-harness) scores itself and is not a kind here (eval/harness.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sftlab.config import TaskConfig
from sftlab.eval.base_cache import BaseCache, cached_base_score
from sftlab.eval.classification import score_classification
from sftlab.eval.entries import (
    build_classification_metrics,
    build_generation_metrics,
    build_perplexity_metrics,
    build_reply_metrics,
)
from sftlab.eval.generation import score_generation
from sftlab.eval.perplexity import score_perplexity, tokenize_text
from sftlab.eval.reply import score_reply_loss
from sftlab.eval.tasks import load_task_items

GEN_METRICS = {"squad": ["exact_match", "f1"], "rouge_l": ["rouge_l"], "exact": ["exact_match"],
               "reply_check": ["good_reply", "ended", "on_topic"]}  # fmt: skip
GEN_HEADLINE = {"reply_check": ["good_reply"]}  # the other checks are shown, not headlined


@dataclass
class Scored:
    """A task's results: the model's, the base's (None without a base), whether their items pair up, and
    what the entry reports besides metrics."""

    model: dict
    base: dict | None = None
    paired: bool = True
    n: int = 0  # items (perplexity: windows)
    extras: dict = field(default_factory=dict)


def _score_pair(model, tokenizer, base_model, base_tokenizer, task, items, batch_size, cache) -> Scored:
    """The model, then the base (from the cache when an identical call scored it before)."""
    res = score_task(model, tokenizer, task, items, batch_size=batch_size)
    base = None
    if base_model is not None:
        base = cached_base_score(
            cache,
            task,
            base_model,
            base_tokenizer,
            batch_size,
            lambda: score_task(base_model, base_tokenizer, task, items, batch_size=batch_size),
        )
    return Scored(res, base, True, res["n"])


def _same_vocab(model, base_model) -> bool:
    a, b = model.get_output_embeddings(), base_model.get_output_embeddings()
    return a is not None and b is not None and a.weight.shape[0] == b.weight.shape[0]


def _score_perplexity_pair(model, tokenizer, base_model, base_tokenizer, task, items, batch_size, cache) -> Scored:
    """When both tokenisations of the text agree and the vocabularies match, one pass scores both models and
    the KL; otherwise each model is scored on its own and windows are not paired (never cached: the KL
    needs both models' logits)."""
    text = items[0]["text"]
    if base_model is None:
        res = score_task(model, tokenizer, task, items, batch_size=batch_size)
        return Scored(res, None, True, res["n_windows"], _perplexity_extras(res))
    ids = tokenize_text(tokenizer, text, task.max_tokens)
    paired = ids == tokenize_text(base_tokenizer, text, task.max_tokens)
    if paired and task.kl_to_base and _same_vocab(model, base_model):
        res = score_task(model, tokenizer, task, items, batch_size=batch_size, base_model=base_model)
        base = {**res["base"], "items": [{"nll": it["base_nll"]} for it in res["items"]]}
        return Scored(res, base, True, res["n_windows"], _perplexity_extras(res))
    extras = _perplexity_extras(res := score_task(model, tokenizer, task, items, batch_size=batch_size))
    if task.kl_to_base:
        extras["kl_skipped"] = "different tokenisation of the text" if not paired else "different vocabulary sizes"
    base = score_task(base_model, base_tokenizer, task, items, batch_size=batch_size)
    return Scored(res, base, paired, res["n_windows"], extras)


def _perplexity_extras(res: dict) -> dict:
    extras = {k: res[k] for k in ("nll", "n_tokens", "n_windows", "seq_len")}
    if "cross_entropy_to_base" in res:
        extras["cross_entropy_to_base"] = res["cross_entropy_to_base"]
    return extras


@dataclass(frozen=True)
class Kind:
    """What differs between task kinds; the scorecard asks, it does not branch."""

    name: str
    compare: Callable[[Scored, TaskConfig, int], dict]  # scorecard entries per metric
    headline: Callable[[TaskConfig], list[str]]  # metrics shown in tables and compared across runs
    item_values: Callable[[TaskConfig, dict], dict[str, list[float]]]  # per-item values behind the headline
    score: Callable[..., dict]  # (model, tokenizer, task, items, batch_size, base_model) -> the scorer's result
    score_pair: Callable[..., Scored] = _score_pair
    load: Callable[[TaskConfig], list[dict]] = load_task_items


def score_task(model, tokenizer, task: TaskConfig, items: list[dict], *, batch_size: int = 32,
               base_model=None) -> dict:  # fmt: skip
    """Run the scorer of ``task.kind`` on loaded items (``base_model``: perplexity only, for the KL)."""
    return kind_of(task).score(model, tokenizer, task, items, batch_size, base_model)


def _items(key: str, name: str):
    return lambda task, res: {name: [float(it[key]) for it in res["items"]]}


KINDS: dict[str, Kind] = {
    "classification": Kind(
        "classification",
        compare=lambda s, task, n_boot: build_classification_metrics(s.model, s.base, n_boot),
        headline=lambda task: ["accuracy"],
        item_values=_items("correct", "accuracy"),
        score=lambda m, tok, task, items, bs, base: score_classification(m, tok, items, task, bs),
    ),
    "generation": Kind(
        "generation",
        compare=lambda s, task, n_boot: build_generation_metrics(s.model, s.base, GEN_METRICS[task.metric], n_boot),
        headline=lambda task: GEN_HEADLINE.get(task.metric, GEN_METRICS[task.metric]),
        item_values=lambda task, res: {m: [float(it[m]) for it in res["items"]] for m in GEN_METRICS[task.metric]},
        score=lambda m, tok, task, items, bs, base: score_generation(m, tok, items, task, bs),
    ),
    "reply_loss": Kind(
        "reply_loss",
        compare=lambda s, task, n_boot: build_reply_metrics(s.model, s.base, n_boot),
        headline=lambda task: ["reply_nll"],
        item_values=_items("nll", "reply_nll"),
        score=lambda m, tok, task, items, bs, base: score_reply_loss(m, tok, items, task, bs),
    ),
    "perplexity": Kind(
        "perplexity",
        compare=lambda s, task, n_boot: build_perplexity_metrics(s.model, s.base, s.paired, n_boot),
        headline=lambda task: ["perplexity", "kl_to_base"],
        item_values=_items("nll", "nll"),
        score=lambda m, tok, task, items, bs, base: score_perplexity(
            m, tok, items[0]["text"], task.seq_len, task.max_tokens, base, batch_size=bs
        ),
        score_pair=_score_perplexity_pair,
    ),
}


def kind_of(task: TaskConfig) -> Kind:
    if task.kind not in KINDS:
        raise ValueError(f"unknown task kind {task.kind!r} (kinds: {', '.join(KINDS)}, lm_eval)")
    return KINDS[task.kind]


__all__ = ["GEN_HEADLINE", "GEN_METRICS", "KINDS", "BaseCache", "Kind", "Scored", "kind_of", "score_task"]
