"""Selection under a budget: by IFD, by response length, or at random; optionally diverse.

IFD (instruction-following difficulty, Li et al. 2024, "From Quantity to Quality", the Cherry LLM data):
``IFD = loss(response | prompt) / loss(response alone)``, mean token cross-entropies under the base
model. Near 1: the prompt hardly helps predict the response (hard to learn to follow); above 1: the
prompt makes the response *less* likely (response and prompt do not fit; such records are dropped); the
highest IFD at or below ``max_ifd`` are selected.

Diversity (optional): walking the records in selection order, a record is skipped when the cosine
similarity of its mean-pooled last hidden state (base model, prompt + response) to an already selected
record is above ``diversity`` (the greedy, embedding-distance form of the diversity step in Deita,
Liu et al. 2024).

Both sequences start with the tokenizer's bos (else its eos, as GPT-2 style models are trained), so
the first response token is predicted in both; prompt and response are tokenised separately, so the
scored response ids are identical with and without the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sftlab.config import DataSelectConfig
from sftlab.data.errors import DataError

PROMPT_SEPARATOR = "\n"


@dataclass
class Scores:
    ifd: np.ndarray  # (records,) float64; nan where the response has no token
    loss_with_prompt: np.ndarray
    loss_alone: np.ndarray
    embeddings: np.ndarray | None  # (records, hidden) float32, L2-normalised; None unless asked for


def start_ids(tokenizer) -> list[int]:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    return []


def build_ifd_rows(
    prompt_ids: list[int], response_ids: list[int], start: list[int], max_seq_len: int
) -> tuple[list[int], list[int], int]:
    """``(with prompt, alone, response tokens scored)``; the response is cut to half of ``max_seq_len`` when
    both do not fit, and the prompt keeps its end.

    >>> build_ifd_rows([5, 6, 7], [8, 9], [0], 5)
    ([0, 6, 7, 8, 9], [0, 8, 9], 2)
    """
    room = max_seq_len - len(start)
    if len(prompt_ids) + len(response_ids) > room:
        response_ids = response_ids[: max(room - len(prompt_ids), room // 2)]
        prompt_ids = prompt_ids[len(prompt_ids) - (room - len(response_ids)) :] if room > len(response_ids) else []
    return start + prompt_ids + response_ids, start + response_ids, len(response_ids)


def _response_losses(model, rows: list[list[int]], n_scored: list[int], pad_id: int, pool: bool):
    """Mean cross-entropy of the last ``n_scored[i]`` tokens of each row (and mean-pooled hidden states)."""
    import torch

    with torch.no_grad():
        return _response_losses_nograd(model, rows, n_scored, pad_id, pool)


def _response_losses_nograd(model, rows, n_scored, pad_id, pool):
    import torch

    from sftlab.eval.forward import pad_right

    ids, mask = pad_right(rows, pad_id)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    # Only the positions that predict a response token go through the LM head: (tokens, vocab), never (B, L, V).
    b_idx, pos, targets, owner = [], [], [], []
    for i, (r, n) in enumerate(zip(rows, n_scored)):
        first = len(r) - n
        b_idx += [i] * n
        pos += list(range(first - 1, len(r) - 1))
        targets += r[first:]
        owner += [i] * n
    losses = torch.zeros(len(rows), dtype=torch.float64)
    if targets:
        logits = model.get_output_embeddings()(hidden[b_idx, pos]).float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="none").double()
        losses.index_add_(0, torch.tensor(owner), nll)
        losses /= torch.tensor([max(n, 1) for n in n_scored], dtype=torch.float64)
    pooled = None
    if pool:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float()
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return losses.numpy(), pooled


def score_records(
    model,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    max_seq_len: int = 512,
    batch_size: int = 16,
    embeddings: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Scores:
    """IFD (and optionally normalised mean-pooled embeddings) of every record, in batches of similar length."""
    model.eval()
    start = start_ids(tokenizer)
    from sftlab.model.load import pad_id_of

    pad_id = pad_id_of(tokenizer)
    p_ids = tokenizer([p + PROMPT_SEPARATOR if p else "" for p in prompts], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    built = [build_ifd_rows(p, r, start, max_seq_len) for p, r in zip(p_ids, r_ids)]
    if not start:  # nothing to predict the first response token from, alone: score both from the second
        built = [(w, a, max(n - 1, 0)) for w, a, n in built]
    n = len(built)
    with_prompt, alone = np.full(n, np.nan), np.full(n, np.nan)
    emb = None
    order = sorted(range(n), key=lambda i: len(built[i][0]))
    for s in range(0, n, batch_size):
        idx = [i for i in order[s : s + batch_size]]
        scored = [i for i in idx if built[i][2] > 0]
        if scored:
            lw, pooled = _response_losses(
                model, [built[i][0] for i in scored], [built[i][2] for i in scored], pad_id, embeddings
            )
            la, _ = _response_losses(model, [built[i][1] for i in scored], [built[i][2] for i in scored], pad_id, False)
            with_prompt[scored], alone[scored] = lw, la
            if pooled is not None:
                if emb is None:
                    emb = np.zeros((n, pooled.shape[1]), dtype=np.float32)
                emb[scored] = pooled.numpy()
        if progress:
            progress(len(idx))
    with np.errstate(divide="ignore", invalid="ignore"):
        ifd = with_prompt / alone
    return Scores(ifd, with_prompt, alone, emb)


def budget_of(cfg: DataSelectConfig, n: int) -> int:
    """Records to keep out of ``n``: ``budget``, or ``round(share * n)``; exactly one must be set."""
    if (cfg.budget is None) == (cfg.share is None):
        raise DataError(
            f"selection by {cfg.by} needs exactly one of budget (records) and share (of each source)",
            field="data.clean.select",
            fix="set data.clean.select.share: 0.1 (10%) or data.clean.select.budget: 1000",
        )
    if cfg.budget is not None:
        if cfg.budget < 0:
            raise DataError(f"budget {cfg.budget} < 0", field="data.clean.select.budget", fix="use a count >= 0")
        return min(cfg.budget, n)
    if not 0 <= cfg.share <= 1:
        raise DataError(f"share {cfg.share} is not in [0, 1]", field="data.clean.select.share", fix="e.g. share: 0.1")
    return min(n, int(round(cfg.share * n)))


def select_greedy(
    order: list[int], budget: int, embeddings: np.ndarray | None = None, max_cosine: float | None = None
) -> tuple[list[int], list[int]]:
    """``(selected, skipped as too similar)``: the first ``budget`` of ``order``, skipping records whose
    cosine to one already selected is above ``max_cosine`` (when given).

    >>> e = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    >>> select_greedy([0, 1, 2], 2, e, 0.9)
    ([0, 2], [1])
    """
    if max_cosine is None or embeddings is None:
        return list(order[:budget]), []
    selected: list[int] = []
    skipped: list[int] = []
    chosen = np.zeros((budget, embeddings.shape[1]), dtype=np.float32)
    for i in order:
        if len(selected) >= budget:
            break
        if selected and float((chosen[: len(selected)] @ embeddings[i]).max()) > max_cosine:
            skipped.append(i)
            continue
        chosen[len(selected)] = embeddings[i]
        selected.append(i)
    return selected, skipped


def load_scoring_model(path: str):
    """``(model, tokenizer)`` of the base model used for IFD / embeddings (safetensors, no remote code)."""
    from sftlab.config import ModelConfig
    from sftlab.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=path)
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    model.eval()
    return model, tokenizer


def length_matched_order(candidates: list[int], target: list[int], lengths: dict[int, int], seed: int,
                         n_bins: int = 10) -> list[int]:  # fmt: skip
    """A random order of ``candidates`` whose first ``len(target)`` records have the length distribution of
    ``target`` (e.g. the records IFD selects): the candidates' lengths are cut into ``n_bins`` quantile bins,
    and each bin gives as many random records as ``target`` has in it (a short bin: the nearest bins fill in).
    The control that tells whether a selection wins by what it picks or only by how long its records are.

    >>> lengths = {i: i for i in range(100)}
    >>> first = length_matched_order(list(range(100)), list(range(90, 100)), lengths, seed=0)[:10]
    >>> sorted(first) == list(range(90, 100))  # the 10 longest of 100 are one bin of 10
    True
    """
    rng = np.random.default_rng(seed)
    edges = np.quantile([lengths[i] for i in candidates], np.linspace(0, 1, n_bins + 1)[1:-1]) if candidates else []

    def bin_of(i: int) -> int:
        return int(np.searchsorted(edges, lengths[i], side="right"))

    pools: dict[int, list[int]] = {b: [] for b in range(n_bins)}
    for i in [candidates[k] for k in rng.permutation(len(candidates)).tolist()]:
        pools[bin_of(i)].append(i)
    picked: list[int] = []
    for i in target:
        b = bin_of(i)
        near = sorted((abs(c - b), c) for c in pools if pools[c])
        if near:
            picked.append(pools[near[0][1]].pop())
    rest = [i for b in range(n_bins) for i in pools[b]]
    return picked + [rest[k] for k in rng.permutation(len(rest)).tolist()]
