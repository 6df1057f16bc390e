"""Render a conversation through its chat template and make its loss mask: the one place labels are made.

How the mask is derived, without ``{% generation %}`` markers: the template renders every prefix of the
conversation (and the generation prompt before each assistant turn); a trained turn is the text between
"conversation so far + generation prompt" and "conversation including this turn", cut after the last
end-of-turn marker in it (``<|im_end|>``, ``</s>``, ``<|eot_id|>``, eos). So the turn's end-of-turn token IS
trained and the separator after it (ChatML's newline) is not. The rendered text is tokenised once, with
``add_special_tokens=False``; token offsets map the character spans onto tokens. The check that the pieces
re-tokenise consistently: every span border must fall between two tokens. A token straddling a border is
trained (never lose part of a reply) and counted (``boundary_mismatches``), since at inference the prompt
would end inside that token. A template whose prefixes are not prefixes of the whole (e.g. one that rewrites
earlier turns) falls back to locating each turn's content in the text; if that fails too, it is an error.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from sftlab.data.errors import EMPTY_MASK, TEMPLATE_ERROR, TOO_LONG, DataError, TemplateError
from sftlab.data.masks import resolve_mask_policy, select_trained
from sftlab.data.templates import (
    end_of_turn_ids,
    end_of_turn_strings,
    render_template,
    resolve_chat_template,
    template_features,
    template_variables,
    to_template_messages,
)
from sftlab.data.types import Conversation, Encoded

IGNORE_INDEX = -100
TRUNCATIONS = ("truncate_right", "truncate_left", "drop", "split")

__all__ = [
    "IGNORE_INDEX",
    "RenderSpec",
    "Rendered",
    "build_render_spec",
    "encode_rendered",
    "encode_texts",
    "render",
    "render_text",
    "resolve_chat_template",
    "truncate_tokens",
]


@dataclass(frozen=True)
class RenderSpec:
    """Everything rendering needs besides the tokenizer; computed once per dataset, cheap to pickle."""

    template_text: str  # chat and completion conversations
    plain_text: str  # text conversations (language modelling) always use the plain template
    variables_json: str  # the template's variables (special tokens), as JSON
    eot_strings: tuple[str, ...]
    eot_ids: frozenset[int]
    mask_policy: str = "auto"
    max_seq_len: int | None = None
    truncation: str = "truncate_right"
    bos_id: int | None = None

    @property
    def variables(self) -> dict:
        return _parse_variables(self.variables_json)


@functools.lru_cache(maxsize=8)
def _parse_variables(variables_json: str) -> dict:
    return json.loads(variables_json)


def build_render_spec(
    tokenizer,
    template_text: str,
    mask_policy: str = "auto",
    max_seq_len: int | None = None,
    truncation: str = "truncate_right",
) -> RenderSpec:
    if truncation not in TRUNCATIONS:
        raise DataError(
            f"unknown truncation {truncation!r}", field="data.truncation", fix=f"use one of {TRUNCATIONS}"
        )
    resolve_mask_policy(mask_policy, "chat")  # validates the name
    eots = end_of_turn_strings(tokenizer, template_text)
    return RenderSpec(
        template_text=template_text,
        plain_text=resolve_chat_template("plain", tokenizer),
        variables_json=json.dumps(template_variables(tokenizer), sort_keys=True),
        eot_strings=eots,
        eot_ids=end_of_turn_ids(tokenizer, eots),
        mask_policy=mask_policy,
        max_seq_len=max_seq_len,
        truncation=truncation,
        bos_id=tokenizer.bos_token_id,
    )


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # trained character ranges, sorted and disjoint
    cut_ok: bool  # truncation may leave a cut span trained (language modelling)
    method: str  # "prefix" or "search"
    source: str = ""
    origin: str = ""
    kind: str = "chat"
    meta: dict = field(default_factory=dict)


class _NotPrefix(Exception):
    """A prefix of the conversation does not render as a prefix of the whole."""


def render_text(conv: Conversation, spec: RenderSpec) -> Rendered:
    """Render ``conv`` and find its trained character spans; ``DataError`` located at ``conv.origin``."""
    try:
        return _render_text(conv, spec)
    except DataError as e:
        raise e.at(conv.origin) from None


def _render_text(conv: Conversation, spec: RenderSpec) -> Rendered:
    policy = resolve_mask_policy(spec.mask_policy, conv.kind)
    template = spec.plain_text if conv.kind == "text" else spec.template_text
    variables = spec.variables
    features = template_features(template, spec.variables_json)
    messages, tools, shift = to_template_messages(conv, features)
    trained = [policy == "all"] * shift + select_trained(conv.messages, policy)
    roles = ["system"] * shift + [m.role for m in conv.messages]
    contents = [m["content"] for m in messages]

    def draw(k: int, gen: bool = False) -> str:
        return render_template(template, messages[:k], variables, add_generation_prompt=gen, tools=tools)

    full = draw(len(messages))
    try:
        spans = _spans_by_prefix(full, draw, trained, roles, contents, policy, spec.eot_strings, features)
        method = "prefix"
    except _NotPrefix:
        spans = _spans_by_search(full, trained, roles, contents, policy, spec.eot_strings)
        method = "search"
    return Rendered(full, _merge(spans), policy == "all", method, conv.source, conv.origin, conv.kind)


def _spans_by_prefix(full, draw, trained, roles, contents, policy, eots, features) -> list[tuple[int, int]]:
    n = len(roles)
    cache: dict[tuple[int, bool], str] = {(n, False): full}

    def boundary(k: int, gen: bool = False) -> int:
        if (k, gen) not in cache:
            try:
                cache[(k, gen)] = draw(k, gen)
            except TemplateError:
                if k or gen:
                    raise _NotPrefix from None
                cache[(k, gen)] = ""  # some templates cannot render an empty conversation
        text = cache[(k, gen)]
        if not full.startswith(text):
            raise _NotPrefix
        return len(text)

    if policy == "all":
        holes = [(boundary(i), boundary(i + 1)) for i in range(n) if not trained[i]]
        return _subtract([(0, len(full))], holes)
    spans = []
    for i in range(n):
        if not trained[i]:
            continue
        start, end = boundary(i), boundary(i + 1)
        if roles[i] == "assistant":
            gen = None
            if "generation_prompt" in features:
                try:
                    gen = boundary(i, True)
                except _NotPrefix:
                    gen = None
            if gen is not None and start <= gen <= end:
                start = gen
            else:  # no usable generation prompt: skip a role header in front of the content, if any
                found = full.find(contents[i], start, end) if contents[i] else -1
                start = found if found > start else start
        cut = _end_of_turn(full, start, end, eots)
        spans.append((start, cut if cut is not None else end))
    return spans


def _spans_by_search(full, trained, roles, contents, policy, eots) -> list[tuple[int, int]]:
    """Fallback: find each message's content in order; a trained one extends to the end-of-turn after it."""
    cursor, spans, holes = 0, [], []
    for i, content in enumerate(contents):
        found, text = -1, content or ""
        for candidate in (text, text.strip()):
            if candidate and (found := full.find(candidate, cursor)) >= 0:
                text = candidate
                break
        if found < 0:
            if trained[i] or (policy == "all" and not trained[i] and text.strip()):
                raise TemplateError(
                    f"cannot locate message {i} ({roles[i]}) in the rendered text: the chat template "
                    "rewrites "
                    "earlier turns and changes this one",
                    reason=TEMPLATE_ERROR,
                    field="data.template",
                    fix="use a template whose rendering of a conversation's prefix is a prefix of the whole, "
                    "e.g. data.template: chatml",
                )
            continue
        end = found + len(text)
        if policy == "all" and not trained[i]:
            holes.append((found, end))
        elif trained[i] and policy != "all":
            marks = [(full.find(e, end), e) for e in eots]
            marks = [(p, e) for p, e in marks if p >= 0 and not full[end:p].strip()]
            spans.append((found, min(marks)[0] + len(min(marks)[1]) if marks else end))
        cursor = end
    return _subtract([(0, len(full))], holes) if policy == "all" else spans


def _end_of_turn(text: str, start: int, end: int, eots: tuple[str, ...]) -> int | None:
    """End of the last end-of-turn marker inside ``text[start:end]``, or None."""
    ends = [p + len(e) for e in eots if (p := text.rfind(e, start, end)) >= 0]
    return max(ends) if ends else None


def _subtract(spans: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``_subtract([(0, 10)], [(2, 4)]) == [(0, 2), (4, 10)]``."""
    for h0, h1 in holes:
        out = []
        for a, b in spans:
            if h1 <= a or h0 >= b:
                out.append((a, b))
                continue
            if a < h0:
                out.append((a, h0))
            if h1 < b:
                out.append((h1, b))
        spans = out
    return [(a, b) for a, b in spans if b > a]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


# ------------------------------------------------------------------------------------------ tokens


def encode_texts(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text, tokenised with ``add_special_tokens=False``.

    Uses the Rust tokenizer directly when it is in its default state (no truncation, padding or special-token
    splitting left on by an earlier call), which is what ``tokenizer(...)`` calls too, minus the overhead.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    plain = (
        backend is not None
        and hasattr(backend, "encode_batch")
        and getattr(backend, "truncation", 1) is None
        and getattr(backend, "padding", 1) is None
        and not getattr(backend, "encode_special_tokens", True)
    )
    if plain:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(out["input_ids"], out["offset_mapping"]))


def _mask_tokens(offsets, spans) -> tuple[list[bool], list[tuple[int, int]], int]:
    """Per token: inside a trained span? Plus each span's token range and the count of straddling tokens."""
    n, k, straddles = len(offsets), 0, 0
    mask, token_spans = [False] * n, []
    for a, b in spans:
        while k < n and offsets[k][1] <= a and offsets[k][0] < a:
            k += 1
        first = k
        while k < n and offsets[k][0] < b:
            mask[k] = True
            straddles += offsets[k][0] < a or offsets[k][1] > b
            k += 1
        token_spans.append((first, k))
    return mask, token_spans, straddles


def truncate_tokens(
    ids: list[int],
    labels: list[int],
    token_spans: list[tuple[int, int]],
    max_seq_len: int | None,
    truncation: str,
    cut_ok: bool = False,
    bos_id: int | None = None,
):
    """(ids, labels, truncated, dropped_reason) after applying ``max_seq_len``.

    ``truncate_right`` keeps the start, ``truncate_left`` the end (and a leading bos), ``drop`` drops the
    record (reason ``too_long``), ``split`` keeps it whole (training cuts it into pieces of ``max_seq_len``).
    A trained span that is cut loses its labels unless ``cut_ok`` (language modelling): a reply without its end-of-turn token would teach the model not to stop.

    >>> truncate_tokens([1, 2, 3, 4], [-100, 2, 3, 4], [(1, 4)], 3, "truncate_right")
    ([1, 2, 3], [-100, -100, -100], True, None)
    """
    n = len(ids)
    if max_seq_len is None or n <= max_seq_len or truncation == "split":
        return ids, labels, False, None
    if truncation == "drop":
        return [], [], False, TOO_LONG
    labels = list(labels)
    if truncation == "truncate_right":
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        for s, e in token_spans:
            if s < max_seq_len < e and not cut_ok:
                labels[s:max_seq_len] = [IGNORE_INDEX] * (max_seq_len - s)
        return ids, labels, True, None
    head = 1 if bos_id is not None and ids and ids[0] == bos_id and max_seq_len > 1 else 0
    cut = n - (max_seq_len - head)  # first index of the kept tail
    for s, e in token_spans:
        if s < cut < e and not cut_ok:
            labels[cut:e] = [IGNORE_INDEX] * (e - cut)
    return ids[:head] + ids[cut:], labels[:head] + labels[cut:], True, None


def encode_rendered(items: list[Rendered], tokenizer, spec: RenderSpec) -> list[Encoded]:
    """Tokenise rendered conversations in one batch and apply masks and truncation.

    ``meta``: truncated, dropped (None, ``too_long`` or ``empty_mask``), boundary_mismatches, mask_method,
    eot_trained (a trained token is an end-of-turn token), kind, text (the rendered text, before truncation),
    num_tokens (before truncation).
    """
    out = []
    for r, (ids, offsets) in zip(items, encode_texts(tokenizer, [r.text for r in items])):
        num_tokens = len(ids)
        mask, token_spans, straddles = _mask_tokens(offsets, r.spans)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        ids, labels, truncated, dropped = truncate_tokens(
            list(ids), labels, token_spans, spec.max_seq_len, spec.truncation, r.cut_ok, spec.bos_id
        )
        trained = [t for t in labels if t != IGNORE_INDEX]
        if dropped is None and not trained:
            dropped = EMPTY_MASK
        meta = {
            "truncated": truncated,
            "dropped": dropped,
            "boundary_mismatches": straddles,
            "mask_method": r.method,
            "eot_trained": any(t in spec.eot_ids for t in trained),
            "kind": r.kind,
            "text": r.text,
            "num_tokens": num_tokens,
        }
        out.append(Encoded(ids, labels, r.source, r.origin, meta))
    return out


def render(
    conv: Conversation,
    tokenizer,
    template_text: str,
    mask_policy: str = "auto",
    max_seq_len: int | None = None,
    truncation: str = "truncate_right",
) -> Encoded:
    """One conversation -> ``Encoded(input_ids, labels)`` (labels -100 where there is no loss).

    ``tokenizer(template rendering of conv.messages, add_special_tokens=False)`` gives exactly ``input_ids``
    (before truncation). A dropped record (``truncation="drop"`` and too long, or nothing left to train)
    comes back with ``meta["dropped"]`` set to the reason. Raises ``DataError`` for template failures.
    """
    spec = build_render_spec(tokenizer, template_text, mask_policy, max_seq_len, truncation)
    return encode_rendered([render_text(conv, spec)], tokenizer, spec)[0]
