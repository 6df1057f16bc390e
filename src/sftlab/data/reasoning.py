"""Reasoning traces as data: read them from a record, and choose what the template gets.

A trace is a message field (``reasoning_content``, ``thinking`` or ``reasoning``: the names transformers
reads) or an inline ``<think>...</think>`` at the start of a reply; either way it becomes
``Message.reasoning`` and the reply's ``content`` is what follows the trace. The template is given it as
``reasoning_content`` (and ``thinking``, as ``apply_chat_template`` does), so it renders the trace in the
model's own format (Qwen3's ``<think>`` block, gpt-oss's analysis channel, ...).

``data.reasoning``:

- ``template``: the template decides (most render the trace of the last turn only and drop earlier ones).
  A template with no place for the trace of a trained reply after the last user message (the trace the
  model has to write at inference: ChatML, Llama 3, SmolLM2) gets it inline, as ``keep`` does, so the data
  trains as given; the data report counts these (``inline``) and says so once;
- ``keep``: every trace is rendered: natively, or inline for a turn whose trace the template would drop; a
  record where even that is dropped is refused;
- ``drop``: traces are removed before rendering.

``data.reasoning_mask`` says which rendered traces carry loss: ``all`` (those of every trained turn),
``last`` (the last assistant turn's only) or ``none`` (traces are context only).

Inline means the trace is written into the reply before its text: exactly as the data wrote it when it came
from inline ``<think>`` text (``Message.reasoning_text``), else ``<think>\\n...\\n</think>\\n\\n``.
"""

from __future__ import annotations

from typing import Any

REASONING_MODES = ("template", "keep", "drop")
REASONING_MASKS = ("all", "last", "none")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the names apply_chat_template reads
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(content: str) -> tuple[str | None, str]:
    """(reasoning, reply) of a reply that starts with an inline trace; (None, content) otherwise.

    Newlines around the trace and before the reply are dropped, as Qwen3's template does.

    >>> split_reasoning("<think>\\nAdd them.\\n</think>\\n\\n4")
    ('Add them.', '4')
    >>> split_reasoning("Use the </think> tag.")
    (None, 'Use the </think> tag.')
    """
    head, found, tail = content.partition(THINK_CLOSE)
    start = head.lstrip()
    if not found or not start.startswith(THINK_OPEN):
        return None, content
    return start[len(THINK_OPEN) :].strip("\n"), tail.lstrip("\n")


def read_inline(content: str) -> tuple[str | None, str, str | None]:
    """(reasoning, reply, the trace as written: everything before the reply) of a reply that may start with
    an inline trace.

    >>> read_inline("<think>Add.</think>\\n4")
    ('Add.', '4', '<think>Add.</think>\\n')
    """
    reasoning, reply = split_reasoning(content)
    return reasoning, reply, None if reasoning is None else content[: len(content) - len(reply)]


def read_reasoning(item: dict[str, Any]) -> Any:
    """The first reasoning field of a raw message that is set (a string when valid), else None."""
    return next((item[k] for k in REASONING_FIELDS if item.get(k) is not None), None)


def inline_parts(reasoning: str, written: str | None = None) -> tuple[str, str]:
    """(head, middle): a trace written into the reply is ``head + reasoning + middle + reply``. ``written``:
    the trace as the data wrote it (``read_inline``), reused byte for byte; else the usual form.

    >>> inline_parts("Add them.")
    ('<think>\\n', '\\n</think>\\n\\n')
    >>> inline_parts("Add.", " <think>Add.</think>\\n")
    (' <think>', '</think>\\n')
    """
    if written is not None and THINK_OPEN in written:
        at = written.index(THINK_OPEN) + len(THINK_OPEN)
        at += len(written[at:]) - len(written[at:].lstrip("\n"))
        if written.startswith(reasoning, at) or not reasoning:
            head, middle = written[:at], written[at + len(reasoning) :]
            if head + reasoning + middle == written:
                return head, middle
    return f"{THINK_OPEN}\n", f"\n{THINK_CLOSE}\n\n"

