"""Raw rows of every supported format -> one canonical ``Conversation``.

Formats and their default columns (rename with ``columns: {canonical: column}``):

- ``text``: ``text`` -> one trained text (language modelling), kind ``text``;
- ``prompt_completion``: ``prompt``, ``completion`` (strings, or message lists) -> kind ``completion``;
- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system``, ``history`` ([[q, a], ...]);
- ``messages``: OpenAI ``messages`` [{role, content, tool_calls?, tool_call_id?, name?, reasoning_content?
  (or thinking / reasoning), train?}], optional ``tools``, ``system``;
- ``sharegpt``: ``conversations`` [{from, value}] with from = human / gpt / system / function_call /
  observation (+ common aliases), optional ``tools`` (list or JSON string), ``system``;

Reasoning traces (a message field, or ``<think>...</think>`` leading a reply) become ``Message.reasoning``
(reasoning.py); tool calls, results and tools lists are kept as given (tools.py, which also reads Hermes
``<tool_call>`` blocks).
- ``classification``: ``sentence`` (or ``text``), ``label`` + ``prompt_template`` and ``label_map``
  -> user = prompt, assistant = completion (default ``" {label}"``, the mapped label after a space);
- ``extraction``: ``context``, ``question``, ``answers`` (SQuAD {text: [...]}, a list, or a string)
  -> completion ``" {answer}"`` with the first answer.

Templates are Python format strings over the row's columns plus the canonical names (``{text}``,
``{label}``, ``{answer}``); write literal braces as ``{{`` and ``}}``.
"""

from __future__ import annotations

from typing import Any

from sftlab.config import SourceConfig
from sftlab.data.errors import (
    LABEL_NOT_IN_MAP,
    MISSING_FIELD,
    TEMPLATE_ERROR,
    UNKNOWN_ROLE,
    WRONG_TYPE,
    DataError,
    short_json,
)
from sftlab.data.reasoning import read_inline, read_reasoning
from sftlab.data.tools import (
    function_call,
    read_tool_calls,
    read_tools,
    split_hermes_calls,
    unwrap_tool_response,
)
from sftlab.data.types import Conversation, Message

FORMATS = ("text", "prompt_completion", "alpaca", "messages", "sharegpt", "classification", "extraction")
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "text": {"text": "text"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "alpaca": {
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "system": "system",
        "history": "history",
    },
    "messages": {"messages": "messages", "tools": "tools", "system": "system"},
    "sharegpt": {"conversations": "conversations", "tools": "tools", "system": "system"},
    "classification": {"text": "sentence", "label": "label"},
    "extraction": {"context": "context", "question": "question", "answers": "answers"},
}
DEFAULT_PROMPT_TEMPLATES = {
    "classification": "{text}\nLabel:",
    "extraction": "Context: {context}\nQuestion: {question}\nAnswer:",
}
DEFAULT_COMPLETION_TEMPLATES = {"classification": " {label}", "extraction": " {answer}"}
# Detection order matters: the first format whose required columns are all present wins.
_DETECT = (
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("extraction", ("context", "question", "answers")),
    ("classification", ("text", "label")),
    ("text", ("text",)),
)
MESSAGE_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def column_name(fmt: str, field: str, cfg: SourceConfig, row: dict | None = None) -> str:
    """The column holding canonical ``field``: the configured one, else the format's default."""
    if field in cfg.columns:
        return cfg.columns[field]
    if fmt == "classification" and field == "text" and row is not None and "sentence" not in row:
        return "text"
    return DEFAULT_COLUMNS.get(fmt, {}).get(field, field)


def detect_format(columns, column_map: dict[str, str] | None = None) -> str:
    """The format implied by a set of column names (after ``columns`` renaming).

    >>> detect_format(["instruction", "input", "output"])
    'alpaca'
    >>> detect_format(["sentence", "label"])
    'classification'
    """
    present = set(columns)
    for canonical, column in (column_map or {}).items():
        if column in present:
            present.add(canonical)
    if "sentence" in present:
        present.add("text")
    for fmt, required in _DETECT:
        if all(c in present for c in required):
            return fmt
    raise DataError(
        f"cannot tell the format from the columns {sorted(set(columns))}",
        field="format",
        fix=f"set format: to one of {', '.join(FORMATS)}, or map columns, e.g. columns: {{prompt: question}}",
    )


def to_conversation(row: dict, fmt: str, source_cfg: SourceConfig, origin: str) -> Conversation:
    """Convert one raw row; raises ``DataError`` (with ``origin``) for missing fields or wrong types."""
    try:
        conv = _CONVERTERS[fmt](row, source_cfg)
    except DataError as e:
        raise e.at(origin) from None
    except KeyError:
        raise DataError(
            f"unknown format {fmt!r}", field="format", origin=origin, fix=f"use one of {', '.join(FORMATS)}"
        ) from None
    conv.origin, conv.source = origin, conv.source or (source_cfg.name or "")
    if (
        source_cfg.system
        and conv.kind != "text"
        and not (conv.messages and conv.messages[0].role == "system")
    ):
        conv.messages.insert(0, Message("system", source_cfg.system))
    return conv


# ------------------------------------------------------------------------------------------ fields


def _value(row: dict, fmt: str, field: str, cfg: SourceConfig, required: bool = True) -> Any:
    col = column_name(fmt, field, cfg, row)
    value = row.get(col)
    if value is None and required:
        have = ", ".join(sorted(k for k in row if not str(k).startswith("_")))
        raise DataError(
            f"missing (the record has: {have})",
            reason=MISSING_FIELD,
            field=col,
            fix=f"add '{col}' to every record, or map it with columns: {{{field}: YOUR_COLUMN}}",
        )
    return value


def _string(row: dict, fmt: str, field: str, cfg: SourceConfig, required: bool = True) -> str | None:
    value = _value(row, fmt, field, cfg, required)
    if value is None or isinstance(value, str):
        return value
    col = column_name(fmt, field, cfg, row)
    raise DataError(
        f"expected a string, got {type(value).__name__} {short_json(value)}",
        reason=WRONG_TYPE,
        field=col,
        fix="store text as a JSON string",
    )


def _tools(row: dict, fmt: str, cfg: SourceConfig) -> list[dict] | None:
    col = column_name(fmt, "tools", cfg, row)
    return read_tools(row.get(col), col)


def _content(value: Any, field: str) -> str | None:
    """Message content: a string, None (kept: OpenAI's null content of a call-only turn), or OpenAI content
    parts [{type: text, text}]."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise DataError(
        f"expected a string, got {type(value).__name__} {short_json(value)}",
        reason=WRONG_TYPE,
        field=field,
        fix="message content must be text (a string)",
    )


def _format(template: str, fields: dict, what: str) -> str:
    try:
        return template.format_map(fields)
    except KeyError as e:
        have = ", ".join(sorted(k for k in fields if not str(k).startswith("_")))
        raise DataError(
            f"{what} uses {{{e.args[0]}}} but the record has no such field (it has: {have})",
            reason=MISSING_FIELD,
            field=str(e.args[0]),
            fix=f"correct {what} or the column names",
        ) from None
    except (ValueError, IndexError, AttributeError) as e:
        raise DataError(
            f"{what} {template!r} is not a valid format string: {e}",
            reason=TEMPLATE_ERROR,
            field=what,
            fix="use {column} placeholders; write literal braces as {{ and }}",
        ) from None


# ------------------------------------------------------------------------------------------ formats


def _text(row: dict, cfg: SourceConfig) -> Conversation:
    return Conversation([Message("assistant", _string(row, "text", "text", cfg))], kind="text")


def _prompt_completion(row: dict, cfg: SourceConfig) -> Conversation:
    prompt = _value(row, "prompt_completion", "prompt", cfg)
    completion = _value(row, "prompt_completion", "completion", cfg)
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion (TRL)
        messages = _messages(prompt, column_name("prompt_completion", "prompt", cfg))
        messages += _messages(completion, column_name("prompt_completion", "completion", cfg))
        return Conversation(messages, kind="completion")
    prompt = _string(row, "prompt_completion", "prompt", cfg)
    reasoning, completion, written = read_inline(_string(row, "prompt_completion", "completion", cfg))
    reply = Message("assistant", completion, reasoning=reasoning, reasoning_text=written)
    return Conversation([Message("user", prompt), reply], kind="completion")


def _alpaca(row: dict, cfg: SourceConfig) -> Conversation:
    instruction = _string(row, "alpaca", "instruction", cfg)
    extra = _string(row, "alpaca", "input", cfg, required=False) or ""
    output = _string(row, "alpaca", "output", cfg)
    system = _string(row, "alpaca", "system", cfg, required=False)
    history = _value(row, "alpaca", "history", cfg, required=False) or []
    messages = [Message("system", system)] if system else []
    col = column_name("alpaca", "history", cfg)
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(
                f"expected [question, answer] string pairs, got {short_json(pair)}",
                reason=WRONG_TYPE,
                field=col,
                fix='write history as [["question", "answer"], ...]',
            )
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    # Instruction and input as one user turn, separated by a blank line (either may be empty).
    user = "\n\n".join(p for p in (instruction, extra) if p.strip())
    reasoning, output, written = read_inline(output)
    messages += [Message("user", user), Message("assistant", output, reasoning=reasoning, reasoning_text=written)]
    return Conversation(messages, kind="chat")


def _messages(
    items: Any, col: str, roles: dict[str, str] = MESSAGE_ROLES, keys=("role", "content")
) -> list[Message]:
    if not isinstance(items, list):
        raise DataError(
            f"expected a list of messages, got {type(items).__name__} {short_json(items)}",
            reason=WRONG_TYPE,
            field=col,
            fix=f'write {col} as [{{"{keys[0]}": ..., "{keys[1]}": ...}}]',
        )
    return [_message(item, f"{col}[{i}]", roles, keys) for i, item in enumerate(items)]


def _message(item: Any, where: str, roles: dict[str, str], keys) -> Message:
    """One raw message -> ``Message``: role, content, train flag, reasoning and tool fields (see tools.py)."""
    if not isinstance(item, dict):
        raise DataError(
            f"expected an object, got {short_json(item)}",
            reason=WRONG_TYPE,
            field=where,
            fix=f'each message is {{"{keys[0]}": ..., "{keys[1]}": ...}}',
        )
    raw_role = item.get(keys[0], item.get("role"))
    role = roles.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise DataError(
            f"unknown role {raw_role!r}",
            reason=UNKNOWN_ROLE,
            field=f"{where}.{keys[0]}",
            fix=f"use one of {', '.join(roles)}",
        )
    content = _content(item.get(keys[1], item.get("content")), f"{where}.{keys[1]}")
    calls = read_tool_calls(item.get("tool_calls"), f"{where}.tool_calls")
    if raw_role == "function_call" and content is not None:  # ShareGPT: the value is the call itself
        try:
            calls, content = function_call(content, f"{where}.{keys[1]}"), ""
        except DataError:
            pass  # not JSON: keep it as the assistant's text
    elif role == "assistant" and calls is None and content and "<tool_call>" in content:
        hermes = split_hermes_calls(content, f"{where}.{keys[1]}")
        if hermes is not None:
            content, calls = hermes
    if role == "tool" and content:
        content = unwrap_tool_response(content)
    reasoning = read_reasoning(item)
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(
            f"expected a string, got {short_json(reasoning)}",
            reason=WRONG_TYPE,
            field=f"{where}.reasoning_content",
            fix="write the reasoning trace as text",
        )
    written = None
    if role == "assistant" and reasoning is None and content:
        reasoning, content, written = read_inline(content)
    train = item.get("train", item.get("weight"))
    if train is not None and train not in (True, False, 0, 1):
        raise DataError(
            f"expected true/false, got {short_json(train)}",
            reason=WRONG_TYPE,
            field=f"{where}.train",
            fix="train: true or false",
        )
    return Message(
        role,
        content,
        None if train is None else bool(train),
        calls,
        reasoning=reasoning,
        reasoning_text=written,
        tool_call_id=_optional_text(item.get("tool_call_id"), f"{where}.tool_call_id"),
        name=_optional_text(item.get("name"), f"{where}.name"),
    )


def _optional_text(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(
        f"expected a string, got {short_json(value)}", reason=WRONG_TYPE, field=field, fix="write it as text"
    )


def _chat(row: dict, cfg: SourceConfig, fmt: str, field: str, roles, keys) -> Conversation:
    col = column_name(fmt, field, cfg, row)
    messages = _messages(_value(row, fmt, field, cfg), col, roles, keys)
    system = _string(row, fmt, "system", cfg, required=False)
    if system and not (messages and messages[0].role == "system"):
        messages.insert(0, Message("system", system))
    return Conversation(messages, tools=_tools(row, fmt, cfg), kind="chat")


def _openai(row: dict, cfg: SourceConfig) -> Conversation:
    return _chat(row, cfg, "messages", "messages", MESSAGE_ROLES, ("role", "content"))


def _sharegpt(row: dict, cfg: SourceConfig) -> Conversation:
    return _chat(row, cfg, "sharegpt", "conversations", SHAREGPT_ROLES, ("from", "value"))


def _label_text(row: dict, cfg: SourceConfig) -> str:
    raw = _value(row, "classification", "label", cfg)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # CSV readers turn 1 into 1.0 when a column has gaps
    key = str(raw).lower() if isinstance(raw, bool) else str(raw)
    if not cfg.label_map:
        return key
    if key not in cfg.label_map:
        raise DataError(
            f"label {raw!r} is not in label_map (keys: {', '.join(cfg.label_map)})",
            reason=LABEL_NOT_IN_MAP,
            field=column_name("classification", "label", cfg),
            fix="add it to label_map, or remove such records",
        )
    return cfg.label_map[key]


def _completion_pair(fmt: str, fields: dict, cfg: SourceConfig) -> Conversation:
    prompt = _format(cfg.prompt_template or DEFAULT_PROMPT_TEMPLATES[fmt], fields, "prompt_template")
    completion = _format(
        cfg.completion_template or DEFAULT_COMPLETION_TEMPLATES[fmt], fields, "completion_template"
    )
    return Conversation([Message("user", prompt), Message("assistant", completion)], kind="completion")


def _classification(row: dict, cfg: SourceConfig) -> Conversation:
    text = _string(row, "classification", "text", cfg)
    fields = {**row, "text": text, "label": _label_text(row, cfg)}
    return _completion_pair("classification", fields, cfg)


def _extraction(row: dict, cfg: SourceConfig) -> Conversation:
    col = column_name("extraction", "answers", cfg, row)
    answers = _value(row, "extraction", "answers", cfg)
    if isinstance(answers, dict):
        answers = answers.get("text")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(
            f"expected SQuAD answers {{text: [...]}}, a list or a string, got {short_json(answers)}",
            reason=WRONG_TYPE,
            field=col,
            fix='write answers as {"text": ["..."]}',
        )
    fields = {**row, "answer": answers[0] if answers else ""}
    for field in ("context", "question"):
        fields[field] = _string(row, "extraction", field, cfg)
    return _completion_pair("extraction", fields, cfg)


_CONVERTERS = {
    "text": _text,
    "prompt_completion": _prompt_completion,
    "alpaca": _alpaca,
    "messages": _openai,
    "sharegpt": _sharegpt,
    "classification": _classification,
    "extraction": _extraction,
}
