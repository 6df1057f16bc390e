"""The canonical intermediate types of the data flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str  # system | user | assistant | tool
    content: str | None  # None only for an assistant turn that only calls tools (OpenAI's content: null)
    train: bool | None = None  # None: decided by the mask policy
    # Tool calls made by an assistant turn, exactly as the data gives them (OpenAI / TRL: id, type,
    # function.name, function.arguments as a string or an object); templates read these fields.
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None  # the turn's reasoning trace (reasoning_content / thinking / <think>...</think>)
    tool_call_id: str | None = None  # a tool result: the id of the call it answers
    name: str | None = None  # a tool result: the tool's name (some templates read it)
    # the trace as the reply wrote it inline ("<think>\n...\n</think>\n\n", everything before the reply), when
    # it came from there: a template with no place for the trace gets it back byte for byte (reasoning.py)
    reasoning_text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as chat templates (and ``apply_chat_template``) take it; reasoning as ``reasoning_content``."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            d["reasoning_content"] = self.reasoning
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        if self.train is not None:
            d["train"] = self.train
        return d


@dataclass
class Conversation:
    """One training record: ordered messages, plus where it came from (for errors and reports)."""

    messages: list[Message]
    source: str = ""  # source name
    origin: str = ""  # "file.jsonl:12" (line or row), for error messages
    tools: list[dict[str, Any]] | None = None  # tool schemas offered to the model, exactly as given
    kind: str = "chat"  # chat | text | completion (decides the default mask policy)


IGNORE_INDEX = -100  # a label with no loss (the position is context, not something the model must say)


def count_trained(labels) -> int:
    """Positions with a loss once labels are shifted: the first token is never predicted, so a labelled first
    token does not count. The one rule for ``num_trained`` (dataset, data report) and the loop's count.

    >>> count_trained([5, -100, 7, 8]), count_trained([-100, -100, 7])
    (2, 1)
    """
    return sum(1 for x in labels[1:] if x != IGNORE_INDEX)


@dataclass
class Encoded:
    """Token ids and labels (-100 where no loss) of one rendered conversation."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_trained(self) -> int:
        return count_trained(self.labels)
