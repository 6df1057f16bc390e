"""Mask policies: which messages of a conversation carry loss (the token-level mask is made in render.py).

Policies:

- ``assistant``: every assistant turn, tool-call turns included (default for chat data);
- ``last_assistant``: only the final assistant turn;
- ``completion``: the assistant turn(s) after the last user turn (prompt/completion data has exactly one);
- ``all``: every token, markup included, except tool outputs (language modelling; default for text);
- ``auto``: assistant for chat, completion for completion data, all for text.

A message's own ``train`` flag (True / False) overrides the policy for that message. Tool outputs are
never trained: the model reads them, it does not produce them.
"""

from __future__ import annotations

from sftlab.data.errors import DataError
from sftlab.data.types import Message

MASK_POLICIES = ("auto", "assistant", "last_assistant", "completion", "all")
_AUTO = {"chat": "assistant", "completion": "completion", "text": "all"}


def resolve_mask_policy(policy: str, kind: str) -> str:
    """The concrete policy for a conversation kind.

    >>> resolve_mask_policy("auto", "completion")
    'completion'
    """
    if policy not in MASK_POLICIES:
        raise DataError(
            f"unknown mask policy {policy!r}", field="data.mask", fix=f"use one of {', '.join(MASK_POLICIES)}"
        )
    return _AUTO.get(kind, "assistant") if policy == "auto" else policy


def select_trained(messages: list[Message], policy: str) -> list[bool]:
    """Per message: does it carry loss under the (resolved) ``policy``?

    >>> from sftlab.data.types import Message as M
    >>> conv = [M("user", "q"), M("assistant", "a"), M("user", "q2"), M("assistant", "b")]
    >>> select_trained(conv, "last_assistant")
    [False, False, False, True]
    """
    roles = [m.role for m in messages]
    last_user = max((i for i, r in enumerate(roles) if r == "user"), default=-1)
    last_assistant = max((i for i, r in enumerate(roles) if r == "assistant"), default=-1)
    out = []
    for i, m in enumerate(messages):
        if policy == "all":
            chosen = True
        elif policy == "last_assistant":
            chosen = i == last_assistant
        elif policy == "completion":
            chosen = m.role == "assistant" and i > last_user
        else:
            chosen = m.role == "assistant"
        if m.train is not None:
            chosen = m.train
        out.append(chosen and m.role != "tool")
    return out
