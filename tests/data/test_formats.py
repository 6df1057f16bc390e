"""Every format converts to the canonical conversation; detection follows columns; errors name the field."""

from __future__ import annotations

import json

import pytest

from sftlab.config import SourceConfig
from sftlab.data.errors import DataError
from sftlab.data.formats import detect_format, to_conversation
from sftlab.data.validate import validate_conversation

CFG = SourceConfig(path="x.jsonl")


def convert(row, fmt, **cfg):
    return to_conversation(row, fmt, SourceConfig(path="x.jsonl", **cfg), "x.jsonl:7")


def roles_contents(conv):
    return [(m.role, m.content) for m in conv.messages]


@pytest.mark.parametrize(
    "columns,expected",
    [
        (["text"], "text"),
        (["prompt", "completion"], "prompt_completion"),
        (["instruction", "input", "output"], "alpaca"),
        (["messages", "rejected_messages"], "messages"),
        (["id", "messages"], "messages"),
        (["conversations", "tools"], "sharegpt"),
        (["sentence", "label"], "classification"),
        (["text", "label"], "classification"),
        (["id", "title", "context", "question", "answers", "article_index"], "extraction"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_detect_format_with_column_map_and_failure():
    assert (
        detect_format(["question", "answer"], {"prompt": "question", "completion": "answer"})
        == "prompt_completion"
    )
    with pytest.raises(DataError, match=r"cannot tell the format.*\['a', 'b'\].*set format"):
        detect_format(["a", "b"])


def test_text_and_prompt_completion():
    conv = convert({"text": "Hello world."}, "text")
    assert conv.kind == "text" and roles_contents(conv) == [("assistant", "Hello world.")]
    conv = convert({"q": "2+2=", "a": "4"}, "prompt_completion", columns={"prompt": "q", "completion": "a"})
    assert conv.kind == "completion" and roles_contents(conv) == [("user", "2+2="), ("assistant", "4")]
    conv = convert(
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "completion": [{"role": "assistant", "content": "yo"}],
        },
        "prompt_completion",
    )
    assert roles_contents(conv) == [("user", "hi"), ("assistant", "yo")]


def test_alpaca_with_input_system_history():
    row = {
        "instruction": "Translate.",
        "input": "chat",
        "output": "cat",
        "system": "You translate.",
        "history": [["Hi", "Hello"]],
    }
    conv = convert(row, "alpaca")
    assert roles_contents(conv) == [
        ("system", "You translate."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Translate.\n\nchat"),
        ("assistant", "cat"),
    ]
    assert roles_contents(convert({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca")) == [
        ("user", "Say hi."),
        ("assistant", "hi"),
    ]
    assert conv.origin == "x.jsonl:7"


def test_sharegpt_tool_calls_observations_and_tools():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "21 degrees."},
        ],
        "tools": json.dumps([{"name": "get_weather", "parameters": {}}]),
    }
    conv = convert(row, "sharegpt")
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "assistant"]
    assert conv.messages[1].content == "" and conv.messages[1].tool_calls == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert conv.tools == [{"name": "get_weather", "parameters": {}}]
    validate_conversation(conv)


def test_messages_with_content_parts_train_flags_and_system_column():
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c", "train": False},
            {"role": "user", "content": "d"},
            {"role": "assistant", "content": "e"},
        ],
        "system": "sys",
    }
    conv = convert(row, "messages")
    assert roles_contents(conv)[:2] == [("system", "sys"), ("user", "ab")]
    assert [m.train for m in conv.messages] == [None, None, False, None, None]


def test_classification_label_map_and_default_completion():
    cfg = {
        "prompt_template": "Review: {sentence}\nSentiment:",
        "label_map": {"0": "negative", "1": "positive"},
    }
    conv = convert({"sentence": "great fun", "label": 1}, "classification", **cfg)
    assert conv.kind == "completion"
    assert roles_contents(conv) == [("user", "Review: great fun\nSentiment:"), ("assistant", " positive")]
    assert (
        convert({"sentence": "x", "label": 0.0}, "classification", **cfg).messages[1].content == " negative"
    )
    # No "sentence" column: the text is in "text"; no label_map: the raw label is the completion.
    conv = convert({"text": "Buy now", "label": "spam"}, "classification")
    assert roles_contents(conv) == [("user", "Buy now\nLabel:"), ("assistant", " spam")]
    with pytest.raises(DataError, match=r"x.jsonl:7: field 'label': label 2 is not in label_map") as e:
        convert({"sentence": "x", "label": 2}, "classification", **cfg)
    assert e.value.reason == "label_not_in_map"


def test_extraction_squad_first_answer():
    row = {
        "context": "Paris is in France.",
        "question": "Where is Paris?",
        "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
    }
    conv = convert(row, "extraction")
    assert roles_contents(conv) == [
        ("user", "Context: Paris is in France.\nQuestion: Where is Paris?\nAnswer:"),
        ("assistant", " France"),
    ]
    conv = convert(row, "extraction", prompt_template="{question}", completion_template=" A: {answer}")
    assert roles_contents(conv) == [("user", "Where is Paris?"), ("assistant", " A: France")]


def test_source_system_prompt_is_added():
    conv = convert({"instruction": "Hi", "output": "Hello"}, "alpaca", system="Be nice.")
    assert conv.messages[0].role == "system" and conv.messages[0].content == "Be nice."


@pytest.mark.parametrize(
    "row,fmt,reason,field",
    [
        ({"instruction": "Hi"}, "alpaca", "missing_field", "output"),
        ({"instruction": "Hi", "output": 3}, "alpaca", "wrong_type", "output"),
        ({"messages": "hello"}, "messages", "wrong_type", "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "unknown_role", "messages[0].role"),
        (
            {"conversations": [{"from": "alien", "value": "x"}]},
            "sharegpt",
            "unknown_role",
            "conversations[0].from",
        ),
        ({"conversations": [], "tools": "[not json"}, "sharegpt", "wrong_type", "tools"),
        ({"sentence": "x", "label": 1}, "classification", "missing_field", "foo"),
    ],
)
def test_conversion_errors_name_origin_field_and_reason(row, fmt, reason, field):
    with pytest.raises(DataError) as e:
        convert(row, fmt, prompt_template="{foo}" if fmt == "classification" else None)
    assert e.value.reason == reason and e.value.field == field and e.value.origin == "x.jsonl:7"
    assert str(e.value).startswith(f"x.jsonl:7: field '{field}'") and "fix:" in str(e.value)
