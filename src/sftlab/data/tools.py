"""Tool use as data: tool calls, tool results and the tools list, read from every common layout.

Kept exactly as given (the template reads these fields, and training must render what
``apply_chat_template(messages, tools=...)`` renders): ``tool_calls`` with their ``id``, ``type``,
``function.name`` and ``function.arguments`` (a JSON string stays a string, an object stays an object),
``tool_call_id`` and ``name`` on tool results, ``content: null`` on a call-only turn, and the tools list.

Layouts read:

- OpenAI / TRL ``messages``: ``tool_calls`` on assistant turns (a list, or a JSON string holding one),
  ``role: tool`` results, ``tools`` per record (a list, or a JSON string);
- ShareGPT (glaive, LLaMA-Factory): ``from: function_call`` whose value is the call as JSON (it becomes an
  assistant turn with empty content, as LLaMA-Factory renders it), ``from: observation`` results, ``tools`` as a JSON string;
- Hermes: ``<tool_call>{...}</tool_call>`` blocks at the end of an assistant reply (JSON, or the Python
  literal dicts of NousResearch's data) become ``tool_calls``; a ``<tool_response>...</tool_response>``
  result is unwrapped. The system prompt is kept as written (it never carries loss).

``data.tool_format: json_in_content`` is the named fallback for templates without tool support
(``tools_as_text``): calls become JSON lines in the reply, results user turns, the tools list a system
message. It is not the model's native format, so it is never used unless asked for.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from sftlab.data.errors import WRONG_TYPE, DataError, short_json

TOOL_FORMATS = ("native", "json_in_content")
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_MAX_LITERAL_CHARS = 20_000  # Python-literal calls longer than this are left as text



def parse_json_field(value: Any, field: str) -> Any:
    """A value that may be stored as a JSON string (tool lists and calls often are); ``""`` is None."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(
            f"not valid JSON: {e.msg}",
            reason=WRONG_TYPE,
            field=field,
            fix="store it as a JSON list (or a string holding one)",
        ) from None


def call_name(call: dict) -> Any:
    """The function name of a tool call in OpenAI (``function.name``) or flat (``name``) form."""
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    return fn.get("name")


def read_tool_calls(value: Any, field: str) -> list[dict] | None:
    """An assistant turn's ``tool_calls``, validated and returned exactly as given (None when empty)."""
    calls = parse_json_field(value, field)
    if calls is None or calls == []:
        return None
    if isinstance(calls, dict):
        calls = [calls]
    for call in calls if isinstance(calls, list) else [calls]:
        if not isinstance(call, dict) or not isinstance(call_name(call), str):
            raise DataError(
                f"a tool call needs a function name, got {short_json(call)}",
                reason=WRONG_TYPE,
                field=field,
                fix='write tool_calls as [{"type": "function", "function": {"name": ..., "arguments": ...}}]',
            )
    return calls


def function_call(value: Any, field: str) -> list[dict]:
    """A ShareGPT ``function_call`` value (the call as JSON: ``{"name", "arguments"}``, or a list of them)
    -> OpenAI tool calls; ``arguments`` is kept as given."""
    calls = parse_json_field(value, field)
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not calls:
        raise DataError(
            "expected a tool call object or a list of them",
            reason=WRONG_TYPE,
            field=field,
            fix='write {"name": ..., "arguments": {...}}',
        )
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call_name(call), str):
            raise DataError(
                f"a tool call needs a string 'name', got {short_json(call)}",
                reason=WRONG_TYPE,
                field=field,
                fix='write {"name": ..., "arguments": {...}}',
            )
        out.append(call if "function" in call else _openai_call(call))
    return out


def _openai_call(call: dict) -> dict:
    args = call["arguments"] if "arguments" in call else call.get("parameters", {})
    return {"type": "function", "function": {"name": call["name"], "arguments": args}}


def read_tools(value: Any, field: str) -> list[dict] | None:
    """The tools list of a record (a list of schemas, or a JSON string holding one), as given."""
    tools = parse_json_field(value, field)
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(
            "expected a list of tool schemas (objects)",
            reason=WRONG_TYPE,
            field=field,
            fix='write tools as [{"type": "function", "function": {"name": ..., "parameters": {...}}}]',
        )
    return tools


def split_hermes_calls(content: str, field: str = "content") -> tuple[str, list[dict]] | None:
    """(reply text, calls) of a Hermes reply ending in ``<tool_call>`` blocks; None if it has none
    or one is not a call (the reply then stays text). A block that is a Python literal which cannot be
    built (``{[1]: 2}``: an unhashable key) is a ``DataError`` at ``field``.

    >>> split_hermes_calls('Let me look.\\n<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>')
    ('Let me look.', [{'type': 'function', 'function': {'name': 'f', 'arguments': {'x': 1}}}])
    """
    blocks = list(_HERMES_CALL.finditer(content))
    if not blocks or content[blocks[-1].end() :].strip():
        return None
    between = [content[a.end() : b.start()] for a, b in zip(blocks, blocks[1:])]
    if any(s.strip() for s in between):
        return None
    calls = []
    for block in blocks:
        body = _parse_object(block.group(1), field)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return None
        calls.append(_openai_call(body))
    return content[: blocks[0].start()].strip(), calls


def _parse_object(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if len(text) > _MAX_LITERAL_CHARS:
        return None
    try:  # NousResearch's data writes Python dicts ({'name': ...}); literals only, nothing is run
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    except Exception as e:  # noqa: BLE001 - a literal that cannot be built: TypeError of {[1]: 2}, ...
        raise DataError(
            f"a <tool_call> block is neither JSON nor a valid Python literal ({type(e).__name__}: {e}): "
            f"{short_json(text)}",
            reason=WRONG_TYPE,
            field=field,
            fix='write each call as <tool_call>{"name": ..., "arguments": {...}}</tool_call> (JSON)',
        ) from None


def unwrap_tool_response(content: str) -> str:
    """A Hermes tool result without its ``<tool_response>`` wrapper.

    >>> unwrap_tool_response("<tool_response>\\n{\\"t\\": 21}\\n</tool_response>")
    '{"t": 21}'
    """
    text = content.strip()
    if text.startswith("<tool_response>") and text.endswith("</tool_response>"):
        return text[len("<tool_response>") : -len("</tool_response>")].strip()
    return content


def tools_as_text(messages: list[dict], tools: list[dict] | None, features: frozenset[str]):
    """``data.tool_format: json_in_content``: (messages, tools, shift) with what the template cannot write
    natively moved into text: calls become JSON lines in the reply, results user turns, the tools list a
    system message. Message i of the input is message ``i + shift`` of the result."""
    out: list[dict] = []
    for m in messages:
        d = dict(m)
        if d.get("tool_calls") and "tool_calls" not in features:
            calls = "\n".join(json.dumps(c.get("function", c), ensure_ascii=False) for c in d.pop("tool_calls"))
            d["content"] = f"{d['content']}\n{calls}" if d.get("content") else calls
        if d["role"] == "tool" and "tool_role" not in features:
            d = {"role": "user", "content": d.get("content")}
        out.append(d)
    shift = 0
    if tools and "tools" not in features:
        listing = "You can call these tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
            shift = 1
        tools = None
    return out, tools, shift
