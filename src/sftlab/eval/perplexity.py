"""Perplexity over non-overlapping windows, and the KL / cross-entropy from a base model's distribution."""

from __future__ import annotations

import math

import torch

from sftlab.eval.forward import encode_plain, special_prefix_ids

_LOGIT_BUDGET = 1 << 24  # logits cells (rows * seq_len * vocab) per forward: bounds memory with big vocabs


def tokenize_text(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Ids of the text (after the tokenizer's special prefix), enough for ``max_tokens`` predicted tokens.

    Only a generous character prefix is tokenised when that already yields enough tokens (WikiText-2
    test is 1.3 MB; a run scores 100k tokens); the few tokens near the cut are never used.
    """
    prefix = special_prefix_ids(tokenizer)
    need = max_tokens + 1 - len(prefix)
    head = text[: (max_tokens + 1) * 16]
    ids = encode_plain(tokenizer, head)
    if len(ids) < need + 8 and len(head) < len(text):
        ids = encode_plain(tokenizer, text)
    return (prefix + ids)[: max_tokens + 1]


def split_windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Windows of ``seq_len + 1`` ids overlapping by one, so each token after the first is predicted once.

    Window w feeds ids ``[w*L, w*L + L)`` and predicts ``[w*L + 1, w*L + L]``. A trailing window with
    fewer than ``seq_len`` targets is dropped unless it is the only one: all windows then weigh the
    same, so the mean of per-window NLLs equals the token-level NLL that perplexity is taken from.
    """
    n_targets = len(ids) - 1
    if n_targets < 1:
        raise ValueError("perplexity needs a text of at least two tokens")
    n_full = n_targets // seq_len
    if n_full == 0:
        return [list(ids)]
    return [ids[w * seq_len : w * seq_len + seq_len + 1] for w in range(n_full)]


def _log_probs(model, inputs: torch.Tensor) -> torch.Tensor:
    """Next-token log-probs (B, L, V) in float32 of inputs (B, L); no padding (all windows are full)."""
    logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1)


def _rows_per_forward(model, seq_len: int, batch_size: int) -> int:
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
    return max(1, min(batch_size, _LOGIT_BUDGET // max(1, seq_len * vocab)))


@torch.inference_mode()
def score_perplexity(
    model, tokenizer, text: str, seq_len: int, max_tokens: int, base_model=None, *, batch_size: int = 8
) -> dict:
    """Token-level NLL / perplexity of ``text`` (first ``max_tokens`` predicted tokens) in windows.

    Returns ``nll`` (mean over predicted tokens, nats), ``perplexity`` = exp(nll), ``n_tokens``,
    ``n_windows``, ``seq_len`` and ``items`` (one per window: ``nll`` mean, ``tokens``). With
    ``base_model`` (same vocabulary, same tokenizer) also, on the same positions:

    - ``kl_to_base``: mean over tokens of KL(p_base || p_model)
      = sum_v p_base(v) (log p_base(v) - log p_model(v));
    - ``cross_entropy_to_base``: mean of -sum_v p_base(v) log p_model(v) (= KL + entropy of the base);
    - ``base``: the base's own ``nll`` / ``perplexity``; items get ``kl``, ``ce`` and ``base_nll``.
    """
    model.eval()
    if base_model is not None:
        base_model.eval()
    windows = split_windows(tokenize_text(tokenizer, text, max_tokens), seq_len)
    device = next(model.parameters()).device
    rows = _rows_per_forward(model, len(windows[0]) - 1, batch_size)
    items = []
    for start in range(0, len(windows), rows):
        chunk = torch.tensor(windows[start : start + rows], dtype=torch.long, device=device)
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        lp = _log_probs(model, inputs)  # (B, L, V)
        nll = -lp.gather(-1, targets[..., None])[..., 0]  # (B, L)
        extra: dict[str, torch.Tensor] = {}
        if base_model is not None:
            lp_base = _log_probs(base_model, inputs.to(next(base_model.parameters()).device)).to(device)
            if lp_base.shape[-1] != lp.shape[-1]:
                raise ValueError(
                    f"KL to base needs the same vocabulary ({lp_base.shape[-1]} vs {lp.shape[-1]})"
                )
            p_base = lp_base.exp()
            # Identical log-probs give exactly 0 (p * 0), so KL of a model to itself is exactly 0.
            extra["kl"] = (p_base * (lp_base - lp)).sum(-1)
            extra["ce"] = -(p_base * lp).sum(-1)
            extra["base_nll"] = -lp_base.gather(-1, targets[..., None])[..., 0]
        for b in range(inputs.shape[0]):
            # float64 means: 100k-token averages should not lose digits to float32 summation.
            row = {"nll": nll[b].double().mean().item(), "tokens": int(targets.shape[1])}
            row.update({k: v[b].double().mean().item() for k, v in extra.items()})
            items.append(row)
    # Windows have equal length, so means of window means are token-level means.
    mean_nll = sum(r["nll"] for r in items) / len(items)
    out = {
        "nll": mean_nll,
        "perplexity": math.exp(mean_nll),
        "n_tokens": sum(r["tokens"] for r in items),
        "n_windows": len(items),
        "seq_len": seq_len,
        "items": items,
    }
    if base_model is not None:
        base_nll = sum(r["base_nll"] for r in items) / len(items)
        out["kl_to_base"] = sum(r["kl"] for r in items) / len(items)
        out["cross_entropy_to_base"] = sum(r["ce"] for r in items) / len(items)
        out["base"] = {"nll": base_nll, "perplexity": math.exp(base_nll)}
    return out
