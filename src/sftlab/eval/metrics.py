"""Pure metric functions: classification (accuracy, macro-F1, ECE) and text answers (SQuAD EM / F1, ROUGE-L).

Every function takes plain Python sequences and returns floats; no model or tensor code here, so each
can be checked against hand-computed values.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_WORD = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------------ classification


def compute_accuracy(preds: Sequence[Hashable], golds: Sequence[Hashable]) -> float:
    """Share of items with ``pred == gold``; 0.0 for no items."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        return 0.0
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


def compute_macro_f1(
    preds: Sequence[Hashable], golds: Sequence[Hashable], labels: Sequence[Hashable]
) -> float:
    """Unweighted mean over ``labels`` of the per-class F1 = 2 TP / (2 TP + FP + FN).

    A class with no gold and no predicted item has F1 0 (as scikit-learn with ``zero_division=0``), so a
    model that never predicts a class is penalised rather than the class silently dropped.
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not labels:
        return 0.0
    f1s = []
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        fp = sum(p == c and g != c for p, g in zip(preds, golds))
        fn = sum(p != c and g == c for p, g in zip(preds, golds))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return sum(f1s) / len(f1s)


def compute_ece(confidences: Sequence[float], correct: Sequence[float], n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    ECE = sum_b (|B_b| / n) * |mean(correct in B_b) - mean(confidence in B_b)|. Item i goes to bin
    ``min(floor(conf_i * n_bins), n_bins - 1)`` (so confidence 1.0 lands in the last bin).
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} correctness values")
    n = len(confidences)
    if n == 0:
        return 0.0
    sums: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(n_bins)]  # count, sum conf, sum correct
    for conf, ok in zip(confidences, correct):
        b = min(int(conf * n_bins), n_bins - 1)
        sums[b][0] += 1
        sums[b][1] += conf
        sums[b][2] += ok
    return sum(abs(s_ok - s_conf) / n for cnt, s_conf, s_ok in sums if cnt)


# ------------------------------------------------------------------------------------ text answers


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def compute_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (SQuAD EM)."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def compute_strict_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the prediction equals a gold answer after stripping surrounding whitespace only."""
    return float(any(prediction.strip() == g.strip() for g in golds))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # As the official SQuAD v1.1 script: no overlap (an empty answer included) scores 0.
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def compute_token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1: bag-of-tokens overlap of the normalised answers, max over gold answers."""
    pred = normalize_answer(prediction).split()
    return max((_token_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def tokenize_for_rouge(text: str) -> list[str]:
    """Lowercased alphanumeric runs, as the default tokenizer of Google's ``rouge_score`` (no stemming)."""
    return _WORD.findall(text.lower())


def compute_rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """ROUGE-L F1 (LCS-based, beta = 1) of the prediction against each gold, max over golds."""
    pred = tokenize_for_rouge(prediction)
    best = 0.0
    for g in golds:
        ref = tokenize_for_rouge(g)
        lcs = _lcs_length(pred, ref)
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred), lcs / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ------------------------------------------------------------------------------------ reply checks

STOPWORDS = frozenset(
    "a an the and or but if then of to in on at by for with from as is are was were be been being it its this "
    "that these those i you he she we they me him her us them my your his our their what which who whom how "
    "why when where do does did not no yes so than too very can could would should will shall may might must "
    "have has had there here into out up down over about also just only some any each other such own same".split()
)


def content_words(text: str) -> set[str]:
    """SQuAD-normalised words of ``text`` that are not stopwords."""
    return {w for w in normalize_answer(text).split() if w not in STOPWORDS}


def is_degenerate(text: str, n: int = 4, repeats: int = 3) -> bool:
    """True when some word ``n``-gram occurs ``repeats`` times or more (a reply caught in a loop)."""
    words = text.lower().split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(c >= repeats for c in grams.values())


def check_reply(reply: str, ended: bool, reference: str, min_recall: float = 1 / 3) -> dict[str, float]:
    """The instruction-following checks of one generated reply (each 0.0 / 1.0):

    - ``ended``: the reply ended its turn (end-of-turn or eos) within the token budget, is not empty and is
      not caught in a loop (no word 4-gram three times);
    - ``on_topic``: it contains at least ``min_recall`` of the reference reply's content words (words that are
      not stopwords, SQuAD-normalised; a reference without content words counts any non-empty reply);
    - ``good_reply``: both.
    """
    proper = float(ended and bool(reply.strip()) and not is_degenerate(reply))
    ref = content_words(reference)
    recall = len(ref & content_words(reply)) / len(ref) if ref else float(bool(reply.strip()))
    on_topic = float(recall >= min_recall)
    return {"ended": proper, "on_topic": on_topic, "good_reply": proper * on_topic}
