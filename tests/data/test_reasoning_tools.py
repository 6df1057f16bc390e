"""Reasoning traces and tool calls as data (issue 17): read as given, rendered in the template's own format,
masked as configured; chat template kwargs; the inference-prompt report; data inspect and template check."""

from __future__ import annotations

import json

import pytest

from sftlab.config import DataConfig, SourceConfig
from sftlab.data.errors import DataError, TemplateError
from sftlab.data.formats import to_conversation
from sftlab.data.render import build_render_spec, render, render_text, resolve_chat_template
from sftlab.data.templates import bake_template_kwargs, check_template_kwargs, render_template
from sftlab.data.types import Conversation, Message
from sftlab.data.validate import validate_conversation

CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]


def convert(row, fmt="messages"):
    return to_conversation(row, fmt, SourceConfig(path="x.jsonl"), "x.jsonl:3")


@pytest.fixture(scope="module")
def tokenizers(shared_data):
    from transformers import AutoTokenizer

    names = ("qwen3", "llama-3.1-instruct", "deepseek-r1-distill-qwen")
    return {n: AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / n)) for n in names}


def spans_text(r):
    return [r.text[a:b] for a, b in r.spans]


# ------------------------------------------------------------------------------------------ reading


def test_openai_tool_fields_are_kept_exactly_as_given():
    row = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "21 C", "tool_call_id": "call_7", "name": "get_weather"},
            {"role": "assistant", "content": "Warm."},
        ],
        "tools": json.dumps(TOOLS),
    }
    conv = convert(row)
    call_turn, result = conv.messages[1], conv.messages[2]
    assert call_turn.content is None and call_turn.tool_calls == [CALL]  # string arguments stay a string, id kept
    assert (result.tool_call_id, result.name) == ("call_7", "get_weather")
    assert conv.tools == TOOLS
    validate_conversation(conv)
    assert call_turn.to_dict() == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    with pytest.raises(DataError, match=r"messages\[1\].tool_calls.*function name"):
        convert({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"x": 1}]}]})


def test_null_content_only_for_a_turn_that_calls_tools():
    conv = convert({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(DataError) as e:
        validate_conversation(conv)
    assert e.value.reason == "empty_content"


def test_reasoning_fields_and_inline_think():
    rows = [
        {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
        {"role": "assistant", "content": "4", "thinking": "2+2"},
        {"role": "assistant", "content": "4", "reasoning": "2+2"},
        {"role": "assistant", "content": "<think>\n2+2\n</think>\n\n4"},
    ]
    for raw in rows:
        conv = convert({"messages": [{"role": "user", "content": "2+2?"}, raw]})
        assert (conv.messages[1].reasoning, conv.messages[1].content) == ("2+2", "4"), raw
    # a field wins; the content is then kept as written
    conv = convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>x</think>y", "reasoning_content": "r"}]})  # fmt: skip
    assert (conv.messages[1].reasoning, conv.messages[1].content) == ("r", "<think>x</think>y")
    alpaca = convert({"instruction": "2+2?", "output": "<think>add</think>4"}, "alpaca")
    assert (alpaca.messages[-1].reasoning, alpaca.messages[-1].content) == ("add", "4")
    assert convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a </think> b"}]}).messages[1].reasoning is None  # fmt: skip


def test_sharegpt_glaive_set_reads_calls_results_and_tools(shared_data):
    from sftlab.data.sources import load_source, read_row

    src = SourceConfig(path=str(shared_data / "multiturn/glaive_toolcall_en_demo_llamafactory.json"), limit=5)
    loaded = load_source(src, None)
    convs = []
    for i in range(len(loaded.dataset)):
        batch = loaded.dataset[i : i + 1]
        convs.append(to_conversation(read_row(loaded, batch, 0, batch["_origin"][0]), "sharegpt", src, "g"))
    calls = [(c, m) for c in convs for m in c.messages if m.tool_calls]
    assert calls, "the demo set has function_call turns"
    conv, turn = calls[0]
    assert turn.role == "assistant" and turn.content == "" and turn.tool_calls[0]["type"] == "function"
    assert isinstance(turn.tool_calls[0]["function"]["arguments"], dict)  # the JSON object, as given
    assert conv.tools and all("name" in t for t in conv.tools)
    i = conv.messages.index(turn)
    assert conv.messages[i + 1].role == "tool"


def test_hermes_calls_and_responses():
    row = {
        "conversations": [
            {"from": "system", "value": "You are a function calling AI model. <tools> [] </tools>"},
            {"from": "human", "value": "Weather in Paris?"},
            {
                "from": "gpt",
                "value": "<tool_call>\n{'arguments': {'city': 'Paris'}, 'name': 'get_weather'}\n</tool_call>",
            },
            {"from": "tool", "value": '<tool_response>\n{"temp": 21}\n</tool_response>'},
            {"from": "gpt", "value": "It is 21."},
        ]
    }
    conv = convert(row, "sharegpt")
    assert conv.messages[2].tool_calls == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert conv.messages[2].content == "" and conv.messages[3].content == '{"temp": 21}'
    bad = convert({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "<tool_call>not a call</tool_call>"}]}, "sharegpt")  # fmt: skip
    assert bad.messages[1].tool_calls is None and bad.messages[1].content == "<tool_call>not a call</tool_call>"


# ------------------------------------------------------------------------------------------ tools


def tool_conv(content=""):
    return Conversation(
        [Message("user", "Weather?"), Message("assistant", content, tool_calls=[CALL]),
         Message("tool", "21 C", tool_call_id="call_7"), Message("assistant", "Warm.")],
        origin="t.jsonl:1", tools=TOOLS,
    )  # fmt: skip


def test_template_without_tool_support_is_refused_by_default(tiny_tokenizer):
    template = resolve_chat_template(None, tiny_tokenizer)
    with pytest.raises(TemplateError, match=r"t.jsonl:1: field 'data.tool_format': .* drops the tool calls of message 1.*json_in_content"):  # fmt: skip
        render(tool_conv(), tiny_tokenizer, template)
    enc = render(tool_conv(), tiny_tokenizer, template, tool_format="json_in_content")
    assert '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}' in enc.meta["text"]


def test_tool_call_record_is_byte_identical_to_apply_chat_template(tokenizers):
    for name in ("qwen3", "llama-3.1-instruct"):
        tok = tokenizers[name]
        conv = tool_conv()
        enc = render(conv, tok, resolve_chat_template(None, tok))
        text = tok.apply_chat_template([m.to_dict() for m in conv.messages], tools=conv.tools, tokenize=False)
        assert enc.meta["text"] == text and enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
        # the tool result and the tools list are never trained; the call turn is
        trained = tok.decode([t for t in enc.labels if t != -100])
        assert "get_weather" in trained and "21 C" not in trained and "Weather" not in trained


def test_null_content_message_names_the_fix(tokenizers):
    tok = tokenizers["qwen3"]  # Qwen3's template concatenates the content: transformers drops a null one
    with pytest.raises(TemplateError, match=r'content: ""'):
        render(tool_conv(content=None), tok, resolve_chat_template(None, tok))


# ------------------------------------------------------------------------------------------ reasoning


def reasoning_conv():
    return Conversation(
        [Message("user", "2+2?"), Message("assistant", "4", reasoning="Two and two."),
         Message("user", "3+3?"), Message("assistant", "6", reasoning="Three and three.")],
        origin="r.jsonl:1",
    )  # fmt: skip


def test_reasoning_modes_on_qwen3(tokenizers):
    tok = tokenizers["qwen3"]
    spec = lambda **o: build_render_spec(tok, resolve_chat_template(None, tok), **o)  # noqa: E731
    r = render_text(reasoning_conv(), spec())
    assert spans_text(r) == ["4<|im_end|>", "<think>\nThree and three.\n</think>\n\n6<|im_end|>"]
    assert r.meta["reasoning"] == {"rendered": 1, "dropped": 1, "inline": 0}
    assert spans_text(render_text(reasoning_conv(), spec(reasoning="drop"))) == [
        "4<|im_end|>", "<think>\n\n</think>\n\n6<|im_end|>"
    ]  # fmt: skip
    # reasoning is context only: the trace itself carries no loss, the rest of the turn does
    assert spans_text(render_text(reasoning_conv(), spec(reasoning_mask="none"))) == [
        "4<|im_end|>", "<think>\n", "\n</think>\n\n6<|im_end|>"
    ]  # fmt: skip
    # keep: Qwen3 strips earlier traces even when written inline, so the record is refused
    with pytest.raises(TemplateError, match=r"r.jsonl:1: field 'data.reasoning': .* drops the reasoning of message 1"):
        render_text(reasoning_conv(), spec(reasoning="keep"))


def test_reasoning_keep_writes_traces_inline_where_the_template_has_no_place(tokenizers):
    tok = tokenizers["llama-3.1-instruct"]
    spec = lambda **o: build_render_spec(tok, resolve_chat_template(None, tok), **o)  # noqa: E731
    # data.reasoning: template: the earlier trace is left out, the final reply's is written inline (below)
    assert spans_text(render_text(reasoning_conv(), spec())) == [
        "4<|eot_id|>", "<think>\nThree and three.\n</think>\n\n6<|eot_id|>"
    ]  # fmt: skip
    r = render_text(reasoning_conv(), spec(reasoning="keep"))
    assert spans_text(r) == [
        "<think>\nTwo and two.\n</think>\n\n4<|eot_id|>",
        "<think>\nThree and three.\n</think>\n\n6<|eot_id|>",
    ]
    assert r.meta["reasoning"] == {"rendered": 2, "dropped": 0, "inline": 2}
    last = render_text(reasoning_conv(), spec(reasoning="keep", reasoning_mask="last"))
    assert spans_text(last)[:2] == ["<think>\n", "\n</think>\n\n4<|eot_id|>"]


# ------------------------------------------------------------------------------------------ kwargs


def test_chat_template_kwargs_reach_every_render_and_can_be_baked(tokenizers):
    tok = tokenizers["qwen3"]
    template = resolve_chat_template(None, tok)
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello.")])
    enc = render(conv, tok, template, chat_template_kwargs={"enable_thinking": False})
    messages = [m.to_dict() for m in conv.messages]
    assert enc.input_ids == tok.apply_chat_template(messages, enable_thinking=False)["input_ids"]
    baked = bake_template_kwargs(template, {"enable_thinking": False})
    prompt = tok.apply_chat_template(messages[:1], chat_template=baked, add_generation_prompt=True, tokenize=False)
    assert prompt == tok.apply_chat_template(
        messages[:1], add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    assert prompt.endswith("<think>\n\n</think>\n\n")
    # an explicit value at inference still wins over the baked default
    assert tok.apply_chat_template(messages[:1], chat_template=baked, add_generation_prompt=True, tokenize=False,
                                   enable_thinking=True).endswith("assistant\n")  # fmt: skip
    literal = bake_template_kwargs("{{ a | tojson }}|{{ b }}|{{ c[0] }}", {"a": {"k": 'q"1'}, "b": None, "c": [1.5]})
    assert render_template(literal, [], {}) == '{"k": "q\\"1"}|None|1.5'
    # non-ASCII values (an emoji is two UTF-16 surrogates as a JSON escape) come back unchanged
    emoji = bake_template_kwargs("{{ a }}|{{ b['é'] }}", {"a": "🚀 é 元", "b": {"é": "🙂"}})
    assert render_template(emoji, [], {}) == "🚀 é 元|🙂"


@pytest.mark.parametrize(
    "kwargs,match",
    [({"messages": 1}, "set by sftlab"), ({"a-b": 1}, "not a template variable"), ({"x": object()}, "plain data"),
     ({"not": True}, "Jinja keyword"), ({"true": 1}, "Jinja keyword"), ({"none": 1}, "Jinja keyword"),
     ({"range": 1}, "Jinja defines itself")],
)  # fmt: skip
def test_bad_chat_template_kwargs(kwargs, match):
    with pytest.raises(TemplateError, match=match) as e:
        check_template_kwargs(kwargs)
    assert e.value.field == "data.chat_template_kwargs"


# ------------------------------------------------------------------------------------------ pipeline report


def chat_file(tmp_path, turns=1):
    rows = []
    for i in range(4):
        msgs = []
        for t in range(turns):
            msgs += [
                {"role": "user", "content": f"Question {i}.{t}?"},
                {"role": "assistant", "content": f"Answer {i}.{t}."},
            ]
        rows.append({"messages": msgs})
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_mismatch_is_reported_per_dataset_with_what_to_set(tokenizers, tmp_path, capsys):
    from sftlab.data.pipeline import build_dataset

    cfg = DataConfig(sources=(SourceConfig(path=str(chat_file(tmp_path))),), cache_dir=None)
    _, report = build_dataset(cfg, tokenizers["deepseek-r1-distill-qwen"], progress=True)
    assert report.prompt_mismatches == 4
    assert "'<think>\\n'" in report.prompt_warning and "data.template" in report.prompt_warning
    err = capsys.readouterr().err
    assert err.count("warning: 4 of 4 records train a reply whose inference prompt is not a prefix") == 1
    multi = DataConfig(sources=(SourceConfig(path=str(chat_file(tmp_path, turns=2))),), cache_dir=None,
                       chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    _, report = build_dataset(multi, tokenizers["qwen3"], progress=False)
    assert report.prompt_mismatches == 4 and "data.mask: last_assistant" in report.prompt_warning
    assert report.chat_template_kwargs == {"enable_thinking": False} and "enable_thinking" in report.format()


def test_kwargs_and_reasoning_settings_are_part_of_the_cache_key(tokenizers, tmp_path):
    from sftlab.data.pipeline import build_dataset

    src = (SourceConfig(path=str(chat_file(tmp_path))),)
    cache = str(tmp_path / "cache")
    a, _ = build_dataset(DataConfig(sources=src, cache_dir=cache), tokenizers["qwen3"], progress=False)
    b, rep = build_dataset(DataConfig(sources=src, cache_dir=cache, chat_template_kwargs={"enable_thinking": False}),
                           tokenizers["qwen3"], progress=False)  # fmt: skip
    # Qwen3 renders the same text; with the empty <think> block in the prompt it is no longer trained
    assert not rep.from_cache and a[0]["input_ids"] == b[0]["input_ids"] and a[0]["labels"] != b[0]["labels"]


# ------------------------------------------------------------------------------------------ inspect, check


def test_inspect_colours_reasoning_and_tool_segments(tmp_path, tokenizers):
    from sftlab.data import inspect

    path = tmp_path / "r.jsonl"
    row = {"messages": [{"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": "", "tool_calls": [CALL], "reasoning_content": "Look it up."},
                        {"role": "tool", "content": "21 C", "tool_call_id": "call_7"},
                        {"role": "assistant", "content": "Warm.", "reasoning_content": "It said 21."}], "tools": TOOLS}  # fmt: skip
    path.write_text(json.dumps(row) + "\n")
    cfg = inspect.build_config(
        type("A", (), {"path": str(path), "format": "auto", "split": "train", "subset": None, "limit": None,
                       "columns": None, "prompt_template": None, "completion_template": None, "label_map": None,
                       "system": None, "template": None, "mask": "auto", "max_seq_len": 1024,
                       "truncation": "truncate_right", "on_error": "raise", "chat_template_kwargs": None,
                       "reasoning": "template", "reasoning_mask": "all", "tool_format": "native"})()
    )  # fmt: skip
    from sftlab.data.pipeline import build_dataset

    tok = tokenizers["qwen3"]
    ds, _ = build_dataset(cfg, tok, progress=False, segments=True)
    kinds = inspect.token_kinds(ds[0])
    runs = inspect.segments(tok, ds[0]["input_ids"], ds[0]["labels"], kinds)
    text = {kind: "".join(t for _, t, k in runs if k == kind) for kind in ("reasoning", "tool")}
    # both traces follow the last user message, so Qwen3 renders both (tokens may straddle a border: "21.\n")
    assert "Look it up." in text["reasoning"] and "It said 21." in text["reasoning"] and "Warm" not in text["reasoning"]
    assert "21 C" in text["tool"] and "get_weather" in text["tool"]
    assert "".join(t for _, t, _ in runs) == tok.decode(ds[0]["input_ids"])


def test_template_check_command_prints_the_table(shared_data, capsys):
    from sftlab.cli import main

    code = main(["template", "check", str(shared_data / "tokenizers" / "gpt-oss-20b"), "--data",
                 str(shared_data / "multiturn/glaive_toolcall_en_demo_llamafactory.json"), "--limit", "10"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for column in ("mask exact", "end-of-turn trained", "== apply_chat_template", "prompt prefix", "tools native", "reasoning"):  # fmt: skip
        assert column in out
    assert "one-letter replies" in out and "glaive_toolcall_en_demo_llamafactory.json (10 records)" in out
    assert main(["template", "check", str(shared_data / "tokenizers" / "gpt2_hf")]) == 0
    assert "no chat template; checking the built-in chatml" in capsys.readouterr().out


def test_final_tokenizer_renders_inference_prompts_with_the_training_kwargs(tokenizers, tmp_path):
    """train/run.py saves the template with data.chat_template_kwargs baked in: sftlab generate / chat /
    eval (build_prompt_ids -> apply_chat_template) and plain transformers render what training rendered."""
    from transformers import AutoTokenizer

    from sftlab.generate import build_prompt_ids

    tok = AutoTokenizer.from_pretrained(tokenizers["qwen3"].name_or_path)
    template = resolve_chat_template(None, tok)
    tok.chat_template = bake_template_kwargs(template, {"enable_thinking": False})
    tok.save_pretrained(str(tmp_path / "final"))
    final = AutoTokenizer.from_pretrained(str(tmp_path / "final"))
    expected = tokenizers["qwen3"].apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=False
    )["input_ids"]
    assert build_prompt_ids(final, "Hi") == expected
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello.")])
    trained = render(conv, final, final.chat_template)  # the baked template needs no kwargs to match
    assert trained.input_ids[: len(expected)] == expected and trained.meta["mask_method"] == "prefix"


# ------------------------------------------------------------------------------------------ review fixes

THINK_ROWS = [  # one reply with an inline trace in each format that reads one
    ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nTwo plus two.\n</think>\n\n4"}]}, "messages"),  # fmt: skip
    ({"instruction": "2+2?", "output": "<think>\nTwo plus two.\n</think>\n\n4"}, "alpaca"),
    ({"prompt": "2+2?", "completion": "<think>\nTwo plus two.\n</think>\n\n4"}, "prompt_completion"),
]


@pytest.mark.parametrize("row,fmt", THINK_ROWS, ids=[f for _, f in THINK_ROWS])
def test_final_reply_trace_is_written_inline_where_the_template_has_no_place(tokenizers, row, fmt):
    """data.reasoning: template on a template without reasoning support (ChatML, SmolLM2, Llama 3): the final
    reply's trace, which the model writes at inference, trains as the data gives it, and is counted."""
    tok = tokenizers["qwen3"]
    conv = convert(row, fmt)
    r = render_text(conv, build_render_spec(tok, resolve_chat_template("chatml", tok)))
    assert spans_text(r) == ["<think>\nTwo plus two.\n</think>\n\n4<|im_end|>"]
    assert r.meta["reasoning"] == {"rendered": 1, "dropped": 0, "inline": 1}
    # the text is apply_chat_template of the messages as the template got them (the trace inline)
    assert r.text == tok.apply_chat_template(r.template_messages(conv), chat_template=resolve_chat_template("chatml", tok), tokenize=False)  # fmt: skip
    # an earlier turn's trace stays left out (the template's choice); a reasoning field is written inline too
    conv = reasoning_conv()
    r = render_text(conv, build_render_spec(tok, resolve_chat_template("chatml", tok)))
    assert spans_text(r) == ["4<|im_end|>", "<think>\nThree and three.\n</think>\n\n6<|im_end|>"]
    assert r.meta["reasoning"] == {"rendered": 1, "dropped": 1, "inline": 1}


def test_inline_traces_keep_the_data_bytes(tokenizers):
    """keep (and the template fallback) reuse the trace as the reply wrote it, not a rebuilt <think>\\n...\\n."""
    tok = tokenizers["llama-3.1-instruct"]
    content = "<think>Add them.</think>\n4"
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think> b"},
                        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": content}]}  # fmt: skip
    conv = convert(row)
    assert conv.messages[3].reasoning_text == "<think>Add them.</think>\n"
    for mode in ("template", "keep"):
        trained = spans_text(render_text(conv, build_render_spec(tok, resolve_chat_template(None, tok), reasoning=mode)))
        assert trained[-1] == content + "<|eot_id|>", mode
    keep = render_text(conv, build_render_spec(tok, resolve_chat_template(None, tok), reasoning="keep"))
    assert spans_text(keep)[0] == "<think>x</think> b<|eot_id|>"


def test_data_report_counts_inline_traces_and_warns_once(tokenizers, tmp_path):
    from sftlab.data.pipeline import build_dataset

    path = tmp_path / "think.jsonl"
    rows = [THINK_ROWS[0][0], {"messages": [{"role": "user", "content": "3+3?"},
                                            {"role": "assistant", "content": "6", "reasoning_content": "Three."}]}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DataConfig(sources=(SourceConfig(path=str(path)),), cache_dir=None, template="chatml")
    ds, report = build_dataset(cfg, tokenizers["qwen3"], progress=False)
    assert (report.reasoning_rendered, report.reasoning_dropped, report.reasoning_inline) == (2, 0, 2)
    assert [w for w in report.warnings if "written inline" in w] == [report.warnings[0]] and "drop" in report.warnings[0]
    text = report.format()
    assert "2 traces rendered (2 written inline), 0 left out by the template" in text and "earlier turns" not in text
    trained = tokenizers["qwen3"].decode([t for t in ds[0]["labels"] if t != -100])
    assert trained == "<think>\nTwo plus two.\n</think>\n\n4<|im_end|>"


TPL_HEAD = "{%- for m in messages %}"
TPL_TAIL = "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"


def test_a_span_never_trains_text_of_an_unmarked_message(tiny_tokenizer):
    """The template branches on a content's length (so only trained replies can be marked) and writes the
    latest user turn differently at inference: the prompt is no prefix, and the reply's start cannot be
    proven without knowing where the user's text is. Refused, never a span over the user's text."""
    template = (
        "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}"
        "{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}" + TPL_HEAD +
        "{%- if m.role == 'user' %}{{- '<|im_start|>user\\n' + ('[long] ' if m.content|length > 12 else '') + "
        "('(latest) ' if loop.index0 == ns.last else '') + m.content + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>assistant\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}" + TPL_TAIL
    )  # fmt: skip
    conv = Conversation([Message("user", "Tell me something long please"), Message("assistant", "Sure."),
                         Message("user", "More, much longer please"), Message("assistant", "OK.")], origin="t:1")  # fmt: skip
    with pytest.raises(TemplateError, match=r"message 1 \(assistant\).*where the reply starts cannot be proven"):
        render(conv, tiny_tokenizer, template, "assistant")


@pytest.mark.parametrize("cut", ["m.content[:6]", "m.content|lower"])
def test_a_template_that_cuts_or_rewrites_a_content_is_named(tiny_tokenizer, cut):
    template = TPL_HEAD + "{{- '<|im_start|>' + m.role + '\\n' + " + cut + " + '<|im_end|>\\n' }}" + TPL_TAIL
    conv = Conversation([Message("user", "hi"), Message("assistant", "a long reply")], origin="t:2")
    with pytest.raises(TemplateError) as e:
        render(conv, tiny_tokenizer, template)
    assert "the template cuts or rewrites message 0's content (truncation or case change)" in str(e.value)
    assert "tools list" not in str(e.value) and e.value.field == "messages[0]"


def test_an_empty_trained_reply_says_so(tiny_tokenizer):
    conv = Conversation([Message("user", "hi"), Message("assistant", "")], origin="t:3")
    with pytest.raises(DataError, match=r"t:3: field 'messages\[1\].content': message 1 \(assistant\) is trained but it is empty") as e:  # fmt: skip
        render(conv, tiny_tokenizer, resolve_chat_template("chatml", tiny_tokenizer))
    assert e.value.reason == "empty_content" and "does not write it" not in str(e.value)


ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)  # fmt: skip


def test_zephyr_style_templates_end_turns_with_eos_as_before(shared_data):
    """Zephyr / TinyLlama-Chat / StableLM-Zephyr write "<|user|>" headers and close turns with eos_token: eval
    stops on the first marker, which must stay eos (GLM's "<|user|>" counts only where nothing else does)."""
    from types import SimpleNamespace

    from sftlab.data.templates import end_of_turn_strings
    from sftlab.eval.forward import end_of_turn

    tok = SimpleNamespace(eos_token="</s>", chat_template=ZEPHYR)
    assert end_of_turn_strings(tok, ZEPHYR) == ("</s>",) and end_of_turn(tok) == "</s>"
    glm = (shared_data / "templates" / "GLM-4.6.jinja").read_text(encoding="utf-8")
    assert end_of_turn_strings(SimpleNamespace(eos_token="<|endoftext|>"), glm) == ("<|user|>", "<|observation|>", "<|endoftext|>")  # fmt: skip


def test_a_malformed_hermes_call_is_a_data_error_and_a_counted_skip(tmp_path, tiny_tokenizer):
    from sftlab.data.pipeline import build_dataset

    bad = {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "<tool_call>{[1]: 2}</tool_call>"}]}  # fmt: skip
    with pytest.raises(DataError, match=r"x.jsonl:3: field 'conversations\[1\].value': a <tool_call> block is neither JSON nor a valid Python literal \(TypeError") as e:  # fmt: skip
        convert(bad, "sharegpt")
    assert e.value.reason == "wrong_type"
    good = {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
    path = tmp_path / "hermes.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    cfg = DataConfig(sources=(SourceConfig(path=str(path), format="sharegpt"),), cache_dir=None, on_error="skip")
    _, report = build_dataset(cfg, tiny_tokenizer, progress=False)
    assert report.skipped == {"wrong_type": 1} and report.records_kept == 1


def test_a_tool_call_with_many_string_arguments_renders(tokenizers):
    tok = tokenizers["qwen3"]
    args = {f"k{i}": f"v{i}" for i in range(1200)}
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": args}}
    conv = Conversation([Message("user", "Weather?"), Message("assistant", "", tool_calls=[call]),
                         Message("tool", "21 C", tool_call_id="call_7"), Message("assistant", "Warm.")], tools=TOOLS)  # fmt: skip
    enc = render(conv, tok, resolve_chat_template(None, tok))
    assert enc.meta["text"] == tok.apply_chat_template([m.to_dict() for m in conv.messages], tools=TOOLS, tokenize=False)
    assert '"k1199": "v1199"' in tok.decode([t for t in enc.labels if t != -100])


# a template without tool calls that writes a result's tool_call_id in the result's header, and one that
# writes a call's id instead of its name (Kimi K2)
ID_IN_RESULT = TPL_HEAD + (
    "{%- if m.role == 'tool' %}{{- '<|im_start|>tool\\n## Return of ' + m.tool_call_id + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
) + TPL_TAIL  # fmt: skip
ID_IN_CALL = ID_IN_RESULT.replace(
    "{%- else %}", "{%- elif m.tool_calls %}{{- '<|im_start|>assistant\\n' + m.content + '<call>' + "
    "m.tool_calls[0].id + '</call><|im_end|>\\n' }}{%- else %}"
)  # fmt: skip


def test_a_call_id_counts_only_where_the_call_itself_writes_it(tiny_tokenizer):
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": {}}}
    conv = Conversation([Message("user", "Weather?"), Message("assistant", "", tool_calls=[call]),
                         Message("tool", "21 C", tool_call_id="call_7"), Message("assistant", "Warm.")], origin="t:4")  # fmt: skip
    with pytest.raises(TemplateError, match=r"drops the tool calls of message 1"):
        render(conv, tiny_tokenizer, ID_IN_RESULT)
    conv.messages[1].content = "Let me look."  # the turn's span needs a field the template writes
    with pytest.raises(TemplateError, match=r"drops the tool calls of message 1"):
        render(conv, tiny_tokenizer, ID_IN_RESULT)
    enc = render(conv, tiny_tokenizer, ID_IN_CALL)
    assert "Let me look.<call>call_7</call><|im_end|>" in tiny_tokenizer.decode([t for t in enc.labels if t != -100])


def test_one_list_of_reasoning_fields_and_one_short_json():
    from sftlab.data import errors, formats, reasoning, templates, tools

    assert templates.REASONING_FIELDS is reasoning.REASONING_FIELDS
    assert formats.short_json is tools.short_json is errors.short_json
    assert not hasattr(formats, "_short") and not hasattr(tools, "_short")
    msgs = templates.template_messages([{"role": "assistant", "content": "4", "reasoning": "r"}])
    assert (msgs[0]["thinking"], msgs[0]["reasoning_content"]) == ("r", "r")
