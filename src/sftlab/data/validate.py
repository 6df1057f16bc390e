"""Checks every conversation must pass before it is rendered; failures are ``DataError`` with a reason code.

Checked: roles are known; contents are strings (null only for an assistant turn that calls tools); outputs (and prompts) are not empty or whitespace-only;
roles come in a sensible order (system first, then user before assistant, no two user or two assistant
turns in a row, tool outputs only after a tool call); at least one turn carries loss.
"""

from __future__ import annotations

from sftlab.data.errors import (
    EMPTY_CONTENT,
    EMPTY_OUTPUT,
    NO_ASSISTANT_TURN,
    NO_TRAINABLE_TURN,
    ROLE_ORDER,
    UNKNOWN_ROLE,
    WRONG_TYPE,
    DataError,
)
from sftlab.data.masks import resolve_mask_policy, select_trained
from sftlab.data.types import ROLES, Conversation


def validate_conversation(conv: Conversation, mask_policy: str = "auto") -> None:
    """Raise ``DataError`` (located at ``conv.origin``) for the first problem found; return None if fine."""
    try:
        _check(conv, mask_policy)
    except DataError as e:
        raise e.at(conv.origin) from None


def _check(conv: Conversation, mask_policy: str) -> None:
    messages = conv.messages
    if not messages:
        raise DataError(
            "the conversation has no messages",
            reason=EMPTY_CONTENT,
            field="messages",
            fix="remove the record",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.role not in ROLES:
            raise DataError(
                f"unknown role {m.role!r}",
                reason=UNKNOWN_ROLE,
                field=f"{where}.role",
                fix=f"use one of {', '.join(ROLES)}",
            )
        if m.content is None and m.role == "assistant" and m.tool_calls:
            continue  # OpenAI's content: null of a turn that only calls tools
        if not isinstance(m.content, str) and m.content is not None:
            raise DataError(
                f"content must be a string, got {type(m.content).__name__}",
                reason=WRONG_TYPE,
                field=f"{where}.content",
                fix="store message text as a string",
            )
        text = m.content or ""
        if text.strip() or m.role == "tool" or (m.role == "assistant" and m.tool_calls):
            continue
        if m.role == "assistant" or conv.kind == "text":
            what = "the text" if conv.kind == "text" else "the output (assistant turn)"
            raise DataError(
                f"{what} is empty or whitespace only",
                reason=EMPTY_OUTPUT,
                field=f"{where}.content",
                fix="write the response, or remove the record",
            )
        raise DataError(
            f"the {m.role} turn is empty or whitespace only",
            reason=EMPTY_CONTENT,
            field=f"{where}.content",
            fix="write the prompt, or remove the record",
        )
    if conv.kind != "text":
        _check_order(conv)
    policy = resolve_mask_policy(mask_policy, conv.kind)
    if not any(select_trained(messages, policy)):
        if not any(m.role == "assistant" for m in messages):
            raise DataError(
                "there is no assistant turn to learn from",
                reason=NO_ASSISTANT_TURN,
                field="messages",
                fix="add the assistant's reply, or remove the record",
            )
        raise DataError(
            f"no turn carries loss under mask policy {policy!r} and the train flags",
            reason=NO_TRAINABLE_TURN,
            field="messages",
            fix="set train: true on a turn, or change data.mask",
        )


def _check_order(conv: Conversation) -> None:
    roles = [m.role for m in conv.messages]
    for i, role in enumerate(roles):
        prev = roles[i - 1] if i else None
        problem = None
        if role == "system" and i > 0:
            problem = "a system message must come first"
        elif role == "assistant" and prev in (None, "system"):
            problem = "the conversation starts with an assistant turn (no user turn before it)"
        elif role == prev and role in ("user", "assistant"):
            problem = f"two {role} turns in a row (messages {i - 1} and {i})"
        elif role == "tool" and not (
            prev == "tool" or (prev == "assistant" and conv.messages[i - 1].tool_calls)
        ):
            problem = "a tool output must follow an assistant tool call"
        if problem:
            raise DataError(
                problem,
                reason=ROLE_ORDER,
                field=f"messages[{i}].role",
                fix="merge or reorder the turns, or remove the record",
            )
