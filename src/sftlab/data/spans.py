"""Exact loss spans by construction: where every message's fields are in the rendered text, proven.

No searching for a reply's text: the conversation is rendered twice by the template itself, once as it is
and once with every field (message contents, reasoning traces, tool call names and string arguments, tool
names in the tools list) replaced by a unique placeholder. The placeholder render splits into the
template's own text (scaffolding) and placeholders; the real render must then be exactly that
scaffolding with each placeholder replaced by its field (as is, stripped, or JSON-escaped, the changes
templates make). ``align`` checks that character by character, so a field's position can only be where
the template wrote it, and a template that rewrites a field in any other way is an error, never a guess.

A trained turn's span (``turn_span``) then starts where the inference prompt ends (the conversation so
far rendered with the generation prompt, verified as a prefix of the whole), never later than the turn's
first field (where the prompt is not a prefix, a mismatch that is reported: at the last line or tag end
before the two differ), and ends with the first end-of-turn marker after its last field, before any other message's
field. It holds the turn's fields, the template's text between them (a ``<think>`` block's tags, a tool
call's syntax) and the end-of-turn marker, and nothing of any other message. Every failure is a
``SpanError`` naming the message and the field.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

FIELDS = ("content", "reasoning", "call", "args", "schema")  # the kinds of marked fields
_MAX_STEPS = 200_000  # alignment steps (backtracking over a field's forms) before giving up


class SpanError(Exception):
    """A field or turn whose position in the rendered text cannot be proven (message -1: the tools list,
    None: no one field can be blamed). ``problem`` may name the field as ``{field}`` (see ``describe``)."""

    def __init__(self, message: int | None, kind: str, problem: str):
        self.message, self.kind, self.problem = message, kind, problem
        super().__init__(f"message {message} {kind}: {problem}")

    def describe(self, name: str) -> str:
        """``problem`` with ``{field}`` replaced by how the field is called (``name``: its message's)."""
        return self.problem.replace("{field}", f"{name}'s {self.kind}")


# (message index or -1 for the tools list, field kind, index): the index of a tool call / tool for names, of
# a tool call and a string value in its arguments for "args" ((j, k): call j's k-th string value), else 0
Key = tuple[int, str, "int | tuple[int, int]"]


@dataclass
class Layout:
    """The rendered text and where each marked field occurs in it (occurrences in text order)."""

    text: str
    pieces: dict[Key, list[tuple[int, int]]] = field(default_factory=dict)
    marked: frozenset[int] | None = None  # the messages whose fields were marked (None: all)
    fields: frozenset[Key] = frozenset()  # every marked field (non-empty values), written or not

    def has_fields(self, message: int) -> bool:
        """Does ``message`` have any non-empty field (text, reasoning, tool call)?"""
        return any(m == message for m, _, _ in self.fields)

    def of(self, message: int, kinds=FIELDS) -> list[tuple[int, int]]:
        return sorted(p for (m, k, _), occ in self.pieces.items() if m == message and k in kinds for p in occ)

    def has(self, message: int, kind: str) -> bool:
        return any(m == message and k == kind and occ for (m, k, _), occ in self.pieces.items())


def field_forms(value: str) -> list[str]:
    """How a template may write a field: as is, stripped (``trim``, Qwen's ``strip('\\n')``), or JSON-escaped
    (``tojson``), in that order of preference.

    >>> field_forms(" a ")
    [' a ', 'a', 'a ', ' a']
    """
    forms = [value, value.strip(), value.strip("\n"), value.lstrip("\n"), value.rstrip("\n"), value.lstrip()]
    forms += [value.rstrip(), json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]]
    return list(dict.fromkeys(forms))


def placeholder_prefix(text: str) -> str:
    """An upper-case ASCII prefix that occurs nowhere in ``text`` (placeholders survive ``upper`` and ``trim``)."""
    prefix, n = "ZQSFT", 0
    while prefix in text:
        n += 1
        prefix = f"ZQSFT{n}X"
    return prefix


def mark(
    messages: list[dict],
    tools: list[dict] | None,
    prefix: str,
    only: set[int] | None = None,
    inline: dict[int, tuple[str, str, str, str]] | None = None,
) -> tuple[list[dict], list[dict] | None, dict[str, tuple[Key, str]]]:
    """Copies of ``messages`` and ``tools`` with fields replaced by placeholders ``PREFIX<n>QZ``, and
    placeholder -> (key, value). Empty strings stay (templates test them), None stays None. ``only``: mark
    just these messages (and not the tools list). ``inline``: message -> (head, reasoning, middle, reply),
    its content written as ``head + reasoning + middle + reply`` (a ``<think>`` block before the reply);
    the reasoning and the reply are marked."""
    slots: dict[str, tuple[Key, str]] = {}

    def put(key: Key, value):
        if not isinstance(value, str) or not value:
            return value
        name = f"{prefix}{len(slots)}QZ"
        slots[name] = (key, value)
        return name

    out = []
    for i, m in enumerate(messages):
        if only is not None and i not in only:
            out.append(m)
            continue
        d = dict(m)
        if inline and i in inline:
            head, reasoning, middle, reply = inline[i]
            d["content"] = f"{head}{put((i, 'reasoning', 0), reasoning)}{middle}{put((i, 'content', 0), reply)}"
        else:
            d["content"] = put((i, "content", 0), d.get("content"))
        d["reasoning_content"] = put((i, "reasoning", 0), d.get("reasoning_content"))
        if d.get("tool_calls"):
            d["tool_calls"] = [_mark_call(c, i, j, put) for j, c in enumerate(d["tool_calls"])]
        out.append(d)
    marked_tools = tools
    if tools and only is None:
        marked_tools = [_mark_call(t, -1, j, put, schema=True) for j, t in enumerate(tools)]
    return out, marked_tools, slots


def _mark_call(call: dict, i: int, j: int, put: Callable, schema: bool = False) -> dict:
    """A tool call (or schema) with its name and its arguments' text marked: a JSON string whole, an
    object's string values one by one (keys ``(i, "args", (j, k))``, any number of them)."""
    if not isinstance(call, dict):
        return call
    out = dict(call)
    nested = isinstance(call.get("function"), dict)
    fn = dict(call["function"]) if nested else out
    fn["name"] = put((i, "schema" if schema else "call", j), fn.get("name"))
    if not schema and "arguments" in fn:
        count = itertools.count()
        fn["arguments"] = _mark_leaves(fn["arguments"], lambda v: put((i, "args", (j, next(count))), v))
    if nested:
        out["function"] = fn
    return out


def _mark_leaves(value, put: Callable, depth: int = 0):
    if isinstance(value, str):
        return put(value)
    if depth < 8 and isinstance(value, dict):
        return {k: _mark_leaves(v, put, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, list):
        return [_mark_leaves(v, put, depth + 1) for v in value]
    return value


def align(marked: str, text: str, slots: dict[str, tuple[Key, str]], prefix: str) -> dict[Key, list[tuple[int, int]]]:
    """Where each placeholder's field is in ``text``: ``text`` must equal ``marked`` with every placeholder
    replaced by one of its field's forms (``field_forms``). Raises ``SpanError`` at the first field that
    cannot be placed (after trying every combination of forms, depth first).

    >>> slots = {"P0QZ": ((1, "content", 0), " hi")}
    >>> align("<a>P0QZ</a>", "<a>hi</a>", slots, "P")
    {(1, 'content', 0): [(3, 5)]}
    """
    damaged = _damaged(marked, text, slots, prefix)
    if damaged is not None:
        raise SpanError(damaged[0], damaged[1], "the template cuts or rewrites {field} (truncation or case change)")
    parts = re.split(f"({re.escape(prefix)}\\d+QZ)", marked)
    scaffolds, names = parts[0::2], parts[1::2]
    if not text.startswith(scaffolds[0]):
        raise SpanError(*_first_key(names, slots), "the template's text before it differs")
    forms = [field_forms(slots[n][1]) if n in slots else [] for n in names]
    tried, starts, ends = [0] * len(names), [0] * len(names), [0] * len(names)
    k, pos, deepest, steps = 0, len(scaffolds[0]), 0, 0
    while k >= 0:
        if k == len(names):
            if pos == len(text):
                break
            k -= 1
            pos = starts[k]
            continue
        advanced = False
        while tried[k] < len(forms[k]) and steps < _MAX_STEPS:
            form = forms[k][tried[k]]
            tried[k], steps = tried[k] + 1, steps + 1
            end = pos + len(form)
            if text.startswith(form, pos) and text.startswith(scaffolds[k + 1], end):
                starts[k], ends[k], advanced = pos, end, True
                k, pos = k + 1, end + len(scaffolds[k + 1])
                break
        if not advanced:
            deepest, tried[k] = max(deepest, k), 0
            k -= 1
            if k >= 0:
                pos = starts[k]
    if k < 0:
        key = slots[names[deepest]][0] if deepest < len(names) and names[deepest] in slots else (None, "content", 0)
        raise SpanError(key[0], key[1], "the template changes it beyond stripping or JSON-escaping")
    pieces: dict[Key, list[tuple[int, int]]] = {}
    for n, s, e in zip(names, starts, ends):
        pieces.setdefault(slots[n][0], []).append((s, e))
    return pieces


def _first_key(names: list[str], slots) -> tuple[int | None, str]:
    key = slots[names[0]][0] if names and names[0] in slots else (None, "content", 0)
    return key[0], key[1]


def _damaged(marked: str, text: str, slots: dict[str, tuple[Key, str]], prefix: str) -> Key | None:
    """The field whose placeholder the template wrote cut short (``content[:6]``) or with its case changed
    (``lower``, ``title``), or None. Outside the intact placeholders, the marked render holds only text the
    real render holds too (scaffolding, unmarked messages), so more placeholder letters there than in the
    real text means a placeholder was cut or rewritten.

    >>> slots = {"ZQSFT0QZ": ((2, "content", 0), "a long reply")}
    >>> _damaged("<a>ZQSFT0</a>", "<a>a long</a>", slots, "ZQSFT")
    (2, 'content', 0)
    """
    whole = re.compile(f"{re.escape(prefix)}\\d+QZ")
    rest = whole.sub("", marked)
    letters = re.compile(re.escape(prefix[:2]), re.IGNORECASE)
    if len(letters.findall(rest)) <= len(letters.findall(text)):
        return None
    found = re.search(f"{re.escape(prefix)}(\\d+)", rest, re.IGNORECASE)
    start = prefix + (found.group(1) if found else "")
    missing = [n for n in slots if n not in set(whole.findall(marked))]
    name = next((n for n in missing if n.startswith(start)), missing[0] if missing else None)
    return slots[name][0] if name else (None, "content", 0)


def locate(
    draw: Callable[[list[dict], list[dict] | None], str],
    messages: list[dict],
    tools: list[dict] | None,
    trained: list[bool],
    inline: dict[int, tuple[str, str]] | None = None,
) -> Layout:
    """The rendered conversation and its proven field positions.

    ``draw(messages, tools)`` renders with the template. Every message is marked; if the template then
    renders differently (it tests a content it is given), only the trained messages are marked (their
    fields are the ones the mask needs; ``turn_span`` then refuses a reply whose inference prompt is not a
    prefix, since where the unmarked messages are is unknown). Raises ``SpanError`` when neither proves the positions, and the
    template's own ``TemplateError`` when the conversation does not render at all.
    """
    text = draw(messages, tools)
    prefix = placeholder_prefix(text)
    error: SpanError | None = None
    for only in (None, {i for i, t in enumerate(trained) if t}):
        marked_messages, marked_tools, slots = mark(messages, tools, prefix, only, inline)
        try:
            marked = draw(marked_messages, marked_tools)
        except Exception:  # noqa: BLE001 - the template rejects a placeholder: try marking less
            continue
        try:
            pieces = align(marked, text, slots, prefix)
        except SpanError as e:
            error = error or e
            continue
        fields = frozenset(key for key, _ in slots.values())
        return Layout(text, pieces, None if only is None else frozenset(only), fields)
    raise error or SpanError(None, "content", "the template fails when the contents are replaced by placeholders")


@dataclass
class Turn:
    """The proven span of one trained message, and what was found on the way."""

    message: int
    start: int
    end: int
    prompt_ok: bool  # the inference prompt is a prefix of the training text, ending where the span starts
    prompt_extra: str = ""  # when not: what the inference prompt has from the point where they differ
    eot: bool = False  # the span ends with an end-of-turn marker


def turn_span(
    layout: Layout,
    i: int,
    prompt: str | None,
    eots: tuple[str, ...],
    prompt_layout: Callable[[], Layout | None] | None = None,
) -> Turn:
    """The span of trained message ``i``: see the module docstring. ``prompt``: the conversation before it
    as inference renders it (with the generation prompt for an assistant turn; None: it does not render,
    and the span starts at the turn's first field). Whatever the template writes between the prompt and the
    reply is the model's to write (Mistral's ``[TOOL_CALLS]``, gpt-oss's channel), so it is trained.
    ``prompt_layout``: the prompt's own layout, needed only when the prompt differs from the training text
    before the previous message's last field (a template that writes history differently at inference)."""
    text = layout.text
    for kind in ("content", "reasoning"):
        if any(len(occ) > 1 for (m, k, _), occ in layout.pieces.items() if m == i and k == kind):
            raise SpanError(i, kind, "the template writes it more than once")
    # a tool call's name may be written again later (gpt-oss names the tool in its result's header): the
    # call itself is its first occurrence
    own = sorted(occ[0] for (m, _, _), occ in layout.pieces.items() if m == i and occ)
    if not own and not layout.has_fields(i):
        raise SpanError(i, "empty", "it is empty (no text, reasoning or tool calls): there is nothing to train")
    if not own:
        raise SpanError(i, "content", "the template does not write it")
    own_start, own_end = own[0][0], max(e for _, e in own)
    foreign = sorted(p for (m, _, _), occ in layout.pieces.items() if m != i for p in occ)
    lcp = _common_prefix(prompt, text) if prompt is not None else 0
    prompt_ok = prompt is not None and lcp == len(prompt)
    start = min(lcp, own_start) if prompt is not None else own_start
    if prompt is not None and not prompt_ok:
        if layout.marked is not None:  # the unmarked messages' text could lie anywhere before the reply
            raise SpanError(
                i,
                "content",
                "its inference prompt is not a prefix of the training text, and the template renders the "
                "conversation differently when the other messages' contents are replaced by placeholders, so "
                "where the reply starts cannot be proven",
            )
        start = _diverged_start(layout, i, prompt, lcp, own_start, prompt_layout)
    limit = min((s for s, _ in foreign if s >= own_end), default=len(text))
    marks = [(p, len(e)) for e in eots if (p := text.find(e, own_end, limit)) >= 0 and p + len(e) <= limit]
    if marks:
        p, n = min(marks)
        end, eot = p + n, True
    elif layout.has(i, "call"):
        raise SpanError(
            i, "call", "no end-of-turn marker follows the tool calls, so where the turn ends cannot be proven"
        )
    else:
        end, eot = own_end, False
    inside = [(s, e) for s, e in foreign if s < end and e > start]
    if inside:
        other = next(m for (m, _, _), occ in layout.pieces.items() if m != i and any(p in occ for p in inside))
        raise SpanError(i, "content", f"its span would hold text of message {other}")
    extra = ""
    if not prompt_ok and prompt is not None:  # what the prompt has where the training text has the reply
        at = start if prompt[:start] == text[:start] else lcp
        extra = prompt[at : at + 40]
    return Turn(i, start, end, prompt_ok, extra, eot)


def _diverged_start(layout: Layout, i: int, prompt: str, lcp: int, own_start: int, prompt_layout) -> int:
    """Where a reply starts when its inference prompt is not a prefix of the training text. Differing inside
    the generation prompt (DeepSeek-R1's ``<think>\\n``): at the last line or tag end before the point of
    difference. Differing earlier (Mistral Nemo writes the system prompt only at inference): the prompt's
    text after the previous field, matched against the training text after it."""
    text = layout.text
    before = [(e, key) for key, occ in layout.pieces.items() if key[0] != i for s, e in occ if e <= own_start]
    floor, floor_key = max(before, default=(0, None))
    if lcp >= floor or floor_key is None:
        return _snap(text, min(lcp, own_start), floor)
    mine = prompt_layout() if prompt_layout else None
    q = max((e for _, e in mine.pieces.get(floor_key, [])), default=None) if mine else None
    if q is None:
        return own_start
    return _snap(text, min(floor + _common_prefix(prompt[q:], text[floor:own_start]), own_start), floor)


def _snap(text: str, pos: int, floor: int) -> int:
    """The last line or tag end at or before ``pos`` (not before ``floor``): where a reply whose prompt
    differs from the training text starts (not inside ``<tool_call>`` when the prompt had ``<think>``).

    >>> _snap("<a>\\n<tool", 7, 0)
    4
    """
    while pos > floor and text[pos - 1] not in "\n>]":
        pos -= 1
    return pos


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings.

    >>> _common_prefix("abcd", "abxd")
    2
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo
