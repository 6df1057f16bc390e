"""Render a conversation through its chat template and make its loss mask: the one place labels are made.

The training text is exactly ``apply_chat_template(messages, tools=tools, **data.chat_template_kwargs)``.
Where each trained turn is in it is proven by construction, never searched for (spans.py): the template
renders the conversation once as it is and once with every field replaced by a placeholder, and the two
must agree character by character. A trained turn's span runs from where its inference prompt ends (the
conversation so far plus the generation prompt, checked to be a prefix of the whole) through its reply,
reasoning and tool calls as the template writes them, to the end-of-turn marker after them (``<|im_end|>``,
``<|eot_id|>``, ``</s>``, eos, ...): so the end-of-turn token IS trained and the separator after it (ChatML's
newline) is not. A record whose spans cannot be proven is an error naming the template, the record and the
message (or a counted skip with ``data.on_error: skip``); there is no fallback.

Reasoning traces (``data.reasoning``, ``data.reasoning_mask``) and tool calls (``data.tool_format``) are
given to the template in its own format; see reasoning.py and tools.py. A turn whose inference prompt is
not a prefix of the training text (DeepSeek-R1's generation prompt ends in ``<think>\\n``, which its
training text never has) is counted and reported with what to set (``meta["prompt_mismatch"]``).

The rendered text is tokenised once, with ``add_special_tokens=False``; token offsets map the character
spans onto tokens. A token straddling a span border is trained (never lose part of a reply) and counted
(``boundary_mismatches``), since at inference the prompt would end inside that token.
"""

from __future__ import annotations

import bisect
import functools
import json
from dataclasses import dataclass, field

from sftlab.data.errors import EMPTY_CONTENT, EMPTY_MASK, TEMPLATE_ERROR, TOO_LONG, DataError, TemplateError
from sftlab.data.masks import resolve_mask_policy, select_trained
from sftlab.data.reasoning import REASONING_MASKS, REASONING_MODES, inline_parts
from sftlab.data.spans import Layout, SpanError, locate, turn_span
from sftlab.data.templates import (
    check_template_kwargs,
    end_of_turn_ids,
    end_of_turn_strings,
    render_template,
    resolve_chat_template,
    template_features,
    template_name,
    template_variables,
)
from sftlab.data.tools import TOOL_FORMATS, call_name, tools_as_text
from sftlab.data.types import IGNORE_INDEX, Conversation, Encoded

TRUNCATIONS = ("truncate_right", "truncate_left", "drop", "split")
SEGMENT_KINDS = ("reasoning", "tool")  # what data inspect colours apart (meta["segments"])

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
    variables_json: str  # the template's variables (special tokens + data.chat_template_kwargs), as JSON
    eot_strings: tuple[str, ...]
    eot_ids: frozenset[int]
    mask_policy: str = "auto"
    max_seq_len: int | None = None
    truncation: str = "truncate_right"
    bos_id: int | None = None
    template_name: str = "the chat template"  # for error messages
    reasoning: str = "template"  # data.reasoning
    reasoning_mask: str = "all"  # data.reasoning_mask
    tool_format: str = "native"  # data.tool_format

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
    *,
    chat_template_kwargs: dict | None = None,
    reasoning: str = "template",
    reasoning_mask: str = "all",
    tool_format: str = "native",
    name: str | None = None,
) -> RenderSpec:
    """The render settings of a dataset (``name``: how errors name the template)."""
    for value, allowed, key in (
        (truncation, TRUNCATIONS, "data.truncation"),
        (reasoning, REASONING_MODES, "data.reasoning"),
        (reasoning_mask, REASONING_MASKS, "data.reasoning_mask"),
        (tool_format, TOOL_FORMATS, "data.tool_format"),
    ):
        if value not in allowed:
            raise DataError(f"unknown {key.split('.')[1]} {value!r}", field=key, fix=f"use one of {allowed}")
    resolve_mask_policy(mask_policy, "chat")  # validates the name
    eots = end_of_turn_strings(tokenizer, template_text)
    variables = {**template_variables(tokenizer), **check_template_kwargs(chat_template_kwargs or {})}
    return RenderSpec(
        template_text=template_text,
        plain_text=resolve_chat_template("plain", tokenizer),
        variables_json=json.dumps(variables, sort_keys=True),
        eot_strings=eots,
        eot_ids=end_of_turn_ids(tokenizer, eots),
        mask_policy=mask_policy,
        max_seq_len=max_seq_len,
        truncation=truncation,
        bos_id=tokenizer.bos_token_id,
        template_name=name or template_name(None, tokenizer),
        reasoning=reasoning,
        reasoning_mask=reasoning_mask,
        tool_format=tool_format,
    )


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # trained character ranges, sorted and disjoint
    cut_ok: bool  # truncation may leave a cut span trained (language modelling)
    method: str  # "prefix": every trained reply starts where its inference prompt ends; else "diverged"
    source: str = ""
    origin: str = ""
    kind: str = "chat"
    # prompt_mismatch ({turn, last, adds} or None), reasoning ({rendered, dropped, inline}: traces the template
    # wrote, left out, and of those written the ones sftlab wrote inline), segments [(start, end, kind)],
    # inline ({message: content}: the replies given to the template with their trace written inline)
    meta: dict = field(default_factory=dict)

    def template_messages(self, conv: Conversation) -> list[dict]:
        """The messages of ``conv`` as the template got them: ``apply_chat_template`` of these (with the
        record's tools and the kwargs) is ``text``."""
        out = [m.to_dict() for m in conv.messages]
        for i, content in self.meta.get("inline", {}).items():
            out[i] = {k: v for k, v in out[i].items() if k != "reasoning_content"} | {"content": content}
        return out


def render_text(conv: Conversation, spec: RenderSpec) -> Rendered:
    """Render ``conv`` and find its trained character spans; ``DataError`` located at ``conv.origin``."""
    try:
        return _render_text(conv, spec)
    except DataError as e:
        raise e.at(conv.origin) from None


@dataclass
class _Record:
    """One conversation on its way through ``_render_text``: the messages as the template gets them."""

    conv: Conversation
    spec: RenderSpec
    policy: str
    template: str
    messages: list[dict]
    tools: list[dict] | None
    trained: list[bool]
    shift: int = 0  # a system message added in front (tool_format json_in_content)
    inline: dict[int, str] = field(default_factory=dict)  # message -> its content with the trace written inline

    def draw(self, messages: list[dict], tools: list[dict] | None, gen: bool = False) -> str:
        return render_template(self.template, messages, self.spec.variables, add_generation_prompt=gen, tools=tools)

    def prompt_layout(self, i: int, marked: frozenset[int] | None) -> Layout | None:
        """The layout of ``prompt(i)`` (its fields marked as in the conversation's layout), or None."""
        try:
            return locate(lambda m, t: self.draw(m, t, self.messages[i]["role"] == "assistant"),
                          self.messages[:i], self.tools, [marked is None or k in marked for k in range(i)])  # fmt: skip
        except (SpanError, TemplateError):
            return None

    def prompt(self, i: int) -> str | None:
        """What inference renders before message ``i`` (with the generation prompt before a reply)."""
        if i == 0:
            return ""
        try:
            return self.draw(self.messages[:i], self.tools, self.messages[i]["role"] == "assistant")
        except TemplateError:
            return None


def _render_text(conv: Conversation, spec: RenderSpec) -> Rendered:
    policy = resolve_mask_policy(spec.mask_policy, conv.kind)
    messages = [_template_message(m.to_dict(), spec) for m in conv.messages]
    template = spec.plain_text if conv.kind == "text" else spec.template_text
    rec = _Record(conv, spec, policy, template, messages, conv.tools or None, select_trained(conv.messages, policy))
    if conv.kind == "text":  # language modelling: the whole text is trained
        full = rec.draw(messages, None)
        return Rendered(full, [(0, len(full))] if full else [], True, "prefix", conv.source, conv.origin, conv.kind)
    if spec.tool_format == "json_in_content":
        features = template_features(template, spec.variables_json)
        rec.messages, rec.tools, rec.shift = tools_as_text(messages, rec.tools, features)
        rec.trained = [policy == "all"] * rec.shift + rec.trained
    try:
        return _spans(rec, _layout(rec))
    except SpanError as e:
        raise _span_error(e, rec) from None


def _template_message(d: dict, spec: RenderSpec) -> dict:
    d.pop("train", None)
    if spec.reasoning == "drop":
        d.pop("reasoning_content", None)
    return d


def _layout(rec: _Record) -> Layout:
    """The proven layout. Traces the template does not render are written inline (``<think>`` text before the
    reply, the data's own bytes where it wrote them so): with ``data.reasoning: keep`` all of them (a record
    where the template drops even that is refused); with ``template``, those of trained replies after the
    last user message (the trace the model writes at inference), where the template has no place for them."""
    layout = locate(rec.draw, rec.messages, rec.tools, rec.trained)
    if rec.spec.tool_format == "native":
        _check_tools(layout, rec)
    mode = rec.spec.reasoning
    dropped = [i for i, m in enumerate(rec.messages) if m.get("reasoning_content") and not layout.has(i, "reasoning")]
    if mode == "drop" or not dropped:
        return layout
    if mode == "template":
        roles = ["system"] * rec.shift + [m.role for m in rec.conv.messages]
        last_user = max((k for k, r in enumerate(roles) if r == "user"), default=-1)
        dropped = [i for i in dropped if i > last_user and rec.trained[i]]
    while dropped:
        parts = {i: _inline_parts(rec, i) for i in dropped}
        messages = [
            {**m, "content": "".join(parts[i]), "reasoning_content": None} if i in parts else m
            for i, m in enumerate(rec.messages)
        ]
        try:
            trial = locate(rec.draw, messages, rec.tools, rec.trained, parts)
            if rec.spec.tool_format == "native":
                _check_tools(trial, rec, messages)
        except (SpanError, TemplateError):
            if mode == "keep":
                raise
            return layout  # the template renders the trace neither way: it is left out (counted)
        still = [i for i in dropped if not trial.has(i, "reasoning")]
        if not still:
            rec.messages, rec.inline = messages, {i: messages[i]["content"] for i in dropped}
            return trial
        if mode == "keep":
            raise TemplateError(
                f"{rec.spec.template_name} drops the reasoning of message {still[0] - rec.shift} (assistant), "
                "even written inline as <think>...</think> (data.reasoning: keep)",
                reason=TEMPLATE_ERROR,
                field="data.reasoning",
                fix="set data.reasoning: template (train the reasoning the template renders, usually the last "
                "turn's) or drop, or split the conversation so that each reasoning reply is the last turn",
            )
        dropped = [i for i in dropped if i not in still]
    return layout


def _inline_parts(rec: _Record, i: int) -> tuple[str, str, str, str]:
    """(head, reasoning, middle, reply) of message ``i`` with its trace written inline (see ``spans.mark``)."""
    reasoning, reply = rec.messages[i]["reasoning_content"], rec.messages[i].get("content") or ""
    written = rec.conv.messages[i - rec.shift].reasoning_text if i >= rec.shift else None
    head, middle = inline_parts(reasoning, written)
    return head, reasoning, middle, reply


def _check_tools(layout: Layout, rec: _Record, messages: list[dict] | None = None) -> None:
    """``data.tool_format: native``: every tool call, tool result and tool schema must be in the text."""
    missing = []
    messages = rec.messages if messages is None else messages
    for i, m in enumerate(messages):
        for j, call in enumerate(m.get("tool_calls") or []):
            if not _call_written(layout, rec, messages, (i, j, call)):
                missing.append(f"the tool calls of message {i - rec.shift}")
        if m["role"] == "tool" and m.get("content") and not _written(layout, (i, "content", 0), m["content"]):
            missing.append(f"the tool result of message {i - rec.shift}")
    for j, tool in enumerate(rec.tools or []):
        if not _written(layout, (-1, "schema", j), call_name(tool) if isinstance(tool, dict) else None):
            missing.append("the tools list")
    if missing:
        raise TemplateError(
            f"{rec.spec.template_name} drops {missing[0]}: it has no native format for them",
            reason=TEMPLATE_ERROR,
            field="data.tool_format",
            fix="set data.tool_format: json_in_content to write tool calls, results and the tools list as "
            "JSON text (not the model's native format), or use a template with tool support (data.template); "
            "some templates write tool calls only with content: null, others need 9-character call ids",
        )


def _call_written(layout: Layout, rec: _Record, messages: list[dict], where: tuple[int, int, dict]) -> bool:
    """Is call ``j`` of message ``i`` (``where``: (i, j, call)) in the text: its name, one of its argument
    values, or its id (Kimi K2 writes the id instead of the name)? The id counts only where the template
    writes it for the call itself: the text still holds it when the tool results answering the call carry
    another ``tool_call_id`` (a template may write a result's id in the result's header)."""
    i, j, call = where
    if not isinstance(call, dict):
        return False
    if _written(layout, (i, "call", j), call_name(call)):
        return True
    if any(m == i and k == "args" and n[0] == j and occ for (m, k, n), occ in layout.pieces.items() if k == "args"):
        return True
    cid = call.get("id")
    if not isinstance(cid, str) or not cid or cid not in layout.text:
        return False
    other = cid.translate(_OTHER_ID)
    if other == cid:
        return False  # no letter or digit to change: the id cannot be told from a result's
    results = [{**m, "tool_call_id": other} if m.get("tool_call_id") == cid else m for m in messages]
    try:
        return cid in rec.draw(results, rec.tools)
    except TemplateError:
        return False


# the same length and kind of characters, none the same (a template checking ids' form still renders)
_OTHER_ID = str.maketrans(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "1234567890bcdefghijklmnopqrstuvwxyzaBCDEFGHIJKLMNOPQRSTUVWXYZA",
)


def _written(layout: Layout, key, value) -> bool:
    """Is the marked field ``key`` in the text (a field that was not marked: is its value there)?"""
    if layout.marked is None or key[0] in layout.marked:
        return bool(layout.pieces.get(key))
    return isinstance(value, str) and value in layout.text


def _spans(rec: _Record, layout: Layout) -> Rendered:
    text, messages, conv = layout.text, rec.messages, rec.conv
    roles = [m["role"] for m in messages]
    assistants = [i for i, r in enumerate(roles) if r == "assistant"]
    turns = []
    if rec.policy == "all":
        untrained = [i for i, t in enumerate(rec.trained) if not t and messages[i].get("content")]
        spans = _subtract([(0, len(text))], [p for i in untrained for p in _content_of(layout, i)])
    else:
        for i in (i for i, t in enumerate(rec.trained) if t):
            mine = functools.partial(rec.prompt_layout, i, layout.marked)
            turns.append(turn_span(layout, i, rec.prompt(i), rec.spec.eot_strings, mine))
        last = assistants[-1] if assistants else -1
        mask = rec.spec.reasoning_mask
        holes = [
            p
            for t in turns
            if mask == "none" or (mask == "last" and t.message != last)
            for p in layout.of(t.message, ("reasoning",))
        ]
        spans = _subtract([(t.start, t.end) for t in turns], holes)
    mismatch = next((t for t in turns if roles[t.message] == "assistant" and not t.prompt_ok), None)
    given = [i + rec.shift for i, m in enumerate(conv.messages) if m.reasoning and rec.spec.reasoning != "drop"]
    rendered = sum(layout.has(i, "reasoning") for i in given)
    meta = {
        "prompt_mismatch": None
        if mismatch is None
        else {
            "turn": mismatch.message - rec.shift,
            "last": mismatch.message == assistants[-1],
            "adds": mismatch.prompt_extra,
        },
        "reasoning": {"rendered": rendered, "dropped": len(given) - rendered, "inline": len(rec.inline)},
        "segments": _segments(layout, messages, turns, rec.spec.eot_strings),
        "inline": {i - rec.shift: content for i, content in rec.inline.items()},
    }
    method = "prefix" if mismatch is None else "diverged"
    return Rendered(text, _merge(spans), rec.policy == "all", method, conv.source, conv.origin, conv.kind, meta)


def _content_of(layout: Layout, i: int) -> list[tuple[int, int]]:
    spans = layout.of(i, ("content",))
    if not spans:
        raise SpanError(i, "content", "cannot be located, so it cannot be left untrained")
    return spans


def _segments(layout: Layout, messages: list[dict], turns, eots: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Character ranges ``data inspect`` colours apart: reasoning traces, tool results, and tool calls (from
    the first call's name or arguments to the end of the turn, its end-of-turn marker left out)."""
    text = layout.text
    out = [(s, e, "reasoning") for i in range(len(messages)) for s, e in layout.of(i, ("reasoning",))]
    out += [(s, e, "tool") for i, m in enumerate(messages) if m["role"] == "tool" for s, e in layout.of(i, ("content",))]
    ends = {t.message: t.end - (max((len(e) for e in eots if text.endswith(e, 0, t.end)), default=0)) for t in turns}
    for i, m in enumerate(messages):
        calls = layout.of(i, ("call", "args"))
        if calls and m["role"] == "assistant":
            out.append((calls[0][0], max(ends.get(i, 0), max(e for _, e in calls)), "tool"))
    return sorted(out)


def _span_error(e: SpanError, rec: _Record) -> DataError:
    if e.kind == "empty":  # a trained reply with nothing in it: the data's fault, not the template's
        n = e.message - rec.shift
        return DataError(
            f"message {n} ({rec.messages[e.message]['role']}) is trained but {e.problem}",
            reason=EMPTY_CONTENT,
            field=f"messages[{n}].content",
            fix="write the reply, or set train: false on it",
        )
    if e.message is None:  # no one field to blame
        what, field_name = "the conversation's fields", "messages"
    elif e.message < 0:
        what, field_name = "the tools list", "tools"
    else:
        role = rec.messages[e.message]["role"] if e.message < len(rec.messages) else ""
        what, field_name = f"message {e.message - rec.shift} ({role})", f"messages[{e.message - rec.shift}]"
    name = what.split(" (")[0] if e.message is not None else "a message"
    kind = "" if e.message is None else f" {e.kind}"
    return TemplateError(
        f"cannot locate {what}{kind} exactly in the text rendered by {rec.spec.template_name}: {e.describe(name)}",
        reason=TEMPLATE_ERROR,
        field=field_name,
        fix="use a template that writes each message as given (data.template), or remove the record "
        "(data.on_error: skip counts such records)",
    )


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
    num_tokens (before truncation), prompt_mismatch and reasoning (see ``Rendered``), segments (token runs
    ``[start, end, kind]`` of reasoning and tool text, for display).
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
        segments = [] if truncated and spec.truncation == "truncate_left" else _token_segments(offsets, r.meta.get("segments", ()), len(ids))
        meta = {
            "truncated": truncated,
            "dropped": dropped,
            "boundary_mismatches": straddles,
            "mask_method": r.method,
            "eot_trained": any(t in spec.eot_ids for t in trained),
            "kind": r.kind,
            "text": r.text,
            "num_tokens": num_tokens,
            "prompt_mismatch": r.meta.get("prompt_mismatch"),
            "reasoning": r.meta.get("reasoning", {"rendered": 0, "dropped": 0}),
            "segments": segments,
        }
        out.append(Encoded(ids, labels, r.source, r.origin, meta))
    return out


def _token_segments(offsets, segments, n: int) -> list[list]:
    """Character segments ``(start, end, kind)`` -> token runs ``[first, last + 1, kind]`` (tokens < n)."""
    starts, ends = [s for s, _ in offsets[:n]], [e for _, e in offsets[:n]]
    out = []
    for a, b, kind in segments:
        first, stop = bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)
        if first < stop:
            out.append([first, stop, kind])
    return out


def render(
    conv: Conversation,
    tokenizer,
    template_text: str,
    mask_policy: str = "auto",
    max_seq_len: int | None = None,
    truncation: str = "truncate_right",
    **options,
) -> Encoded:
    """One conversation -> ``Encoded(input_ids, labels)`` (labels -100 where there is no loss).

    ``tokenizer(apply_chat_template(conv.messages, tools=conv.tools, **chat_template_kwargs),
    add_special_tokens=False)`` gives exactly ``input_ids`` (before truncation). ``options``: the keyword
    settings of ``build_render_spec`` (chat_template_kwargs, reasoning, reasoning_mask, tool_format, name).
    A dropped record (``truncation="drop"`` and too long, or nothing left to train) comes back with
    ``meta["dropped"]`` set to the reason. Raises ``DataError`` for template failures.
    """
    spec = build_render_spec(tokenizer, template_text, mask_policy, max_seq_len, truncation, **options)
    return encode_rendered([render_text(conv, spec)], tokenizer, spec)[0]
