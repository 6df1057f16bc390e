"""The canonical intermediate types of the data flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str  # system | user | assistant | tool
    content: str
    train: bool | None = None  # None: decided by the mask policy
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-style tool calls made by an assistant turn

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.train is not None:
            d["train"] = self.train
        return d


@dataclass
class Conversation:
    """One training record: ordered messages, plus where it came from (for errors and reports)."""

    messages: list[Message]
    source: str = ""  # source name
    origin: str = ""  # "file.jsonl:12" (line or row), for error messages
    tools: list[dict[str, Any]] | None = None  # tool schemas offered to the model
    kind: str = "chat"  # chat | text | completion (decides the default mask policy)


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
        return sum(1 for x in self.labels if x != -100)
