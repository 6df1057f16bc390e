"""Golden loss masks: trained ids are exactly the assistant contents plus their end-of-turn tokens.

Expected ids are built independently of the code under test: from hand-written text pieces tokenised
one by one (tiny and GPT-2 tokenizers), or from hand-written token strings (Mistral).
"""

from __future__ import annotations

import pytest

from sftlab.data.errors import DataError, TemplateError
from sftlab.data.render import render, resolve_chat_template
from sftlab.data.types import Conversation, Message

SYSTEM, Q1, A1, Q2, A2 = (
    "Be brief.",
    "What is the capital of France?",
    "Paris.",
    "And of Germany?",
    "Berlin is the capital.",
)


def chat(*turns, system=None, kind="chat", tools=None):
    messages = [Message("system", system)] if system else []
    roles = ("user", "assistant")
    messages += [t if isinstance(t, Message) else Message(roles[i % 2], t) for i, t in enumerate(turns)]
    return Conversation(messages, source="s", origin="f.jsonl:1", kind=kind, tools=tools)


def chatml_pieces(system, exchanges):
    """Hand-written ChatML text pieces [(text, trained)] for (user, assistant) exchanges."""
    pieces, pending = [], f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    for user, assistant in exchanges:
        pieces.append((pending + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False))
        pieces.append((assistant + "<|im_end|>", True))
        pending = "\n"
    pieces.append(("\n", False))
    return pieces


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("exchanges", [[(Q1, A1)], [(Q1, A1), (Q2, A2)]], ids=["single", "multi"])
def test_tiny_chatml_golden(tiny_tokenizer, expected_pieces, system, exchanges):
    conv = chat(*[t for ex in exchanges for t in ex], system=system)
    enc = render(conv, tiny_tokenizer, resolve_chat_template(None, tiny_tokenizer), "auto")
    ids, labels = expected_pieces(tiny_tokenizer, chatml_pieces(system, exchanges))
    assert enc.input_ids == ids and enc.labels == labels
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert enc.num_trained == sum(len(tiny_tokenizer.encode(a)) + 1 for _, a in exchanges)
    assert [enc.input_ids[i] for i, x in enumerate(enc.labels) if x == im_end] == [im_end] * len(exchanges)
    assert (
        enc.meta["eot_trained"]
        and enc.meta["boundary_mismatches"] == 0
        and enc.meta["mask_method"] == "prefix"
    )


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_gpt2_builtin_chatml_golden(gpt2_tokenizer, expected_pieces, trained_runs, system):
    exchanges = [(Q1, A1), (Q2, A2)]
    conv = chat(Q1, A1, Q2, A2, system=system)
    enc = render(conv, gpt2_tokenizer, resolve_chat_template("chatml", gpt2_tokenizer), "assistant")
    ids, labels = expected_pieces(gpt2_tokenizer, chatml_pieces(system, exchanges))
    assert enc.input_ids == ids and enc.labels == labels
    # <|im_end|> is text for GPT-2 (7 tokens), trained with each reply; the newline after it is not.
    assert trained_runs(enc.input_ids, enc.labels) == [
        gpt2_tokenizer.encode(a + "<|im_end|>") for _, a in exchanges
    ]


def test_mistral_own_template_golden(mistral_tokenizer, trained_runs):
    """Mistral's own template: replies follow [/INST] directly and end with </s> (trained); one bos."""
    conv = chat(Q1, A1, Q2, A2, system=SYSTEM)
    enc = render(conv, mistral_tokenizer, resolve_chat_template(None, mistral_tokenizer), "auto")
    expected_text = f"<s>{SYSTEM} [INST] {Q1} [/INST]{A1}</s> [INST] {Q2} [/INST]{A2}</s>"
    assert enc.input_ids == mistral_tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    runs = [["Par", "is", ".", "</s>"], ["Ber", "lin", "▁is", "▁the", "▁capital", ".", "</s>"]]
    assert trained_runs(enc.input_ids, enc.labels) == [
        mistral_tokenizer.convert_tokens_to_ids(r) for r in runs
    ]
    assert enc.input_ids.count(mistral_tokenizer.bos_token_id) == 1


def test_mistral_own_template_without_system_is_a_clear_error(mistral_tokenizer):
    # The shared Mistral template reads system_message unconditionally: inference would fail the same way.
    with pytest.raises(TemplateError, match=r"f.jsonl:1.*system_message.*data.template"):
        render(chat(Q1, A1), mistral_tokenizer, resolve_chat_template(None, mistral_tokenizer))


def test_llama3_builtin_golden(fresh_tiny_tokenizer, expected_pieces):
    tok = fresh_tiny_tokenizer
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    enc = render(chat(Q1, " " + A1 + " ", system=SYSTEM), tok, resolve_chat_template("llama-3", tok))
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    pieces = [
        (
            h.format("system")
            + SYSTEM
            + "<|eot_id|>"
            + h.format("user")
            + Q1
            + "<|eot_id|>"
            + h.format("assistant"),
            False,
        ),
        (A1 + "<|eot_id|>", True),
    ]  # Meta's template trims contents
    assert (enc.input_ids, enc.labels) == expected_pieces(tok, pieces)


def test_tool_call_turns_trained_tool_outputs_not(tiny_tokenizer, expected_pieces):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    conv = chat(
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", '{"temp": 21}'),
        Message("assistant", "It is 21 degrees."),
    )
    enc = render(conv, tiny_tokenizer, resolve_chat_template("chatml", tiny_tokenizer), "auto")
    pieces = [
        ("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n", False),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            True,
        ),
        ('\n<|im_start|>tool\n{"temp": 21}<|im_end|>\n<|im_start|>assistant\n', False),
        ("It is 21 degrees.<|im_end|>", True),
        ("\n", False),
    ]
    assert (enc.input_ids, enc.labels) == expected_pieces(tiny_tokenizer, pieces)
    # Under "all" the tool output is still not trained.
    enc_all = render(conv, tiny_tokenizer, resolve_chat_template("chatml", tiny_tokenizer), "all")
    tool_ids = tiny_tokenizer.encode('{"temp": 21}')
    start = next(
        i for i in range(len(enc_all.input_ids)) if enc_all.input_ids[i : i + len(tool_ids)] == tool_ids
    )
    assert all(x == -100 for x in enc_all.labels[start : start + len(tool_ids)])
    assert enc_all.labels[0] == enc_all.input_ids[0]


def test_prompt_completion_plain_golden(gpt2_tokenizer, mistral_tokenizer, expected_pieces, trained_runs):
    conv = chat("Review: a gorgeous film.\nSentiment:", " positive", kind="completion")
    enc = render(conv, gpt2_tokenizer, resolve_chat_template("plain", gpt2_tokenizer))
    pieces = [("Review: a gorgeous film.\nSentiment:", False), (" positive<|endoftext|>", True)]
    assert (enc.input_ids, enc.labels) == expected_pieces(gpt2_tokenizer, pieces)  # no bos for GPT-2
    enc = render(conv, mistral_tokenizer, resolve_chat_template("plain", mistral_tokenizer))
    assert enc.input_ids[:2] == [
        1,
        mistral_tokenizer.convert_tokens_to_ids("▁Review"),
    ]  # bos, as tokenizer(text)
    assert enc.input_ids.count(1) == 1
    assert trained_runs(enc.input_ids, enc.labels) == [
        mistral_tokenizer.convert_tokens_to_ids(["▁positive", "</s>"])
    ]


def test_text_kind_trains_everything_plus_eos(tiny_tokenizer):
    conv = Conversation([Message("assistant", "The quick brown fox.")], kind="text")
    # Text never gets chat markup, whatever the template: it renders through "plain".
    enc = render(conv, tiny_tokenizer, resolve_chat_template(None, tiny_tokenizer))
    assert enc.input_ids == tiny_tokenizer.encode("The quick brown fox.") + [tiny_tokenizer.eos_token_id]
    assert enc.labels == enc.input_ids


@pytest.mark.parametrize(
    "policy,expected",
    [
        ("assistant", [A1, A2]),
        ("last_assistant", [A2]),
        ("completion", [A2]),
        ("auto", [A1, A2]),
    ],
)
def test_mask_policies(tiny_tokenizer, trained_runs, policy, expected):
    enc = render(chat(Q1, A1, Q2, A2), tiny_tokenizer, resolve_chat_template(None, tiny_tokenizer), policy)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trained_runs(enc.input_ids, enc.labels) == [tiny_tokenizer.encode(a) + [im_end] for a in expected]


def test_train_flags_override_policy(tiny_tokenizer, trained_runs):
    conv = chat(
        Message("user", Q1),
        Message("assistant", A1, train=False),
        Message("user", Q2, train=True),
        Message("assistant", A2),
    )
    enc = render(conv, tiny_tokenizer, resolve_chat_template(None, tiny_tokenizer), "assistant")
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    user_turn = tiny_tokenizer.encode(f"<|im_start|>user\n{Q2}") + [im_end]
    assert trained_runs(enc.input_ids, enc.labels) == [user_turn, tiny_tokenizer.encode(A2) + [im_end]]


def test_apply_chat_template_reproduces_training_ids(tiny_tokenizer, gpt2_tokenizer, mistral_tokenizer):
    """The template saved with the model renders, via transformers, exactly the ids trained on."""
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    convs = [
        chat(Q1, A1, Q2, A2),
        chat(Q1, A1, system=SYSTEM),
        chat(
            Message("user", Q1),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", "1"),
            Message("assistant", A1),
            tools=[{"name": "f", "parameters": {}}],
        ),
    ]
    cases = [
        (tiny_tokenizer, None),
        (gpt2_tokenizer, "chatml"),
        (gpt2_tokenizer, "plain"),
        (gpt2_tokenizer, "llama-3"),
        (mistral_tokenizer, "mistral"),
        (mistral_tokenizer, "plain"),
    ]
    for tok, name in cases:
        template = resolve_chat_template(name, tok)
        for conv in convs if name else convs[:2]:  # the tiny template cannot write tools (see next test)
            enc = render(conv, tok, template)
            msgs = [m.to_dict() for m in conv.messages]
            text = tok.apply_chat_template(msgs, tools=conv.tools, chat_template=template, tokenize=False)
            assert tok(text, add_special_tokens=False)["input_ids"] == enc.input_ids, (name, text)
            ids = tok.apply_chat_template(msgs, tools=conv.tools, chat_template=template)["input_ids"]
            assert ids == enc.input_ids
    enc = render(
        chat(Q1, A1, system=SYSTEM), mistral_tokenizer, resolve_chat_template(None, mistral_tokenizer)
    )
    msgs = [m.to_dict() for m in chat(Q1, A1, system=SYSTEM).messages]
    assert mistral_tokenizer.apply_chat_template(msgs)["input_ids"] == enc.input_ids


def test_template_without_tool_support_gets_calls_as_text(tiny_tokenizer, trained_runs):
    """A template that drops tool calls / outputs / schemas must not silently train on conversations without
    them: with the named fallback (data.tool_format: json_in_content) calls become JSON text (trained),
    schemas a system message. (This template writes any role, so the tool output keeps its role; for one
    that drops it, it would become a user turn.) Without it the record is refused (test_reasoning_tools.py)."""
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    conv = chat(
        Message("user", Q1),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", "42"),
        Message("assistant", A1),
        tools=[{"name": "f"}],
    )
    enc = render(conv, tiny_tokenizer, resolve_chat_template(None, tiny_tokenizer), tool_format="json_in_content")
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert enc.meta["text"].startswith(
        '<|im_start|>system\nYou can call these tools:\n{"name": "f"}<|im_end|>'
    )
    assert "<|im_start|>tool\n42<|im_end|>" in enc.meta["text"]
    assert trained_runs(enc.input_ids, enc.labels) == [
        tiny_tokenizer.encode('{"name": "f", "arguments": {"x": 1}}') + [im_end],
        tiny_tokenizer.encode(A1) + [im_end],
    ]


def test_generation_prompt_tokenises_like_the_training_prefix(tiny_tokenizer, gpt2_tokenizer):
    """What the model sees at inference (prompt + generation prompt) is the untrained prefix trained on."""
    for tok, name in [(tiny_tokenizer, None), (gpt2_tokenizer, "chatml"), (gpt2_tokenizer, "plain")]:
        template = resolve_chat_template(name, tok)
        conv = chat(Q1, A1, system=SYSTEM)
        enc = render(conv, tok, template)
        first_trained = next(i for i, x in enumerate(enc.labels) if x != -100)
        prompt = tok.apply_chat_template(
            [m.to_dict() for m in conv.messages[:-1]], chat_template=template, add_generation_prompt=True
        )["input_ids"]
        assert prompt == enc.input_ids[:first_trained]


def test_straddling_token_is_trained_and_counted(gpt2_tokenizer, trained_runs):
    # "Par" + "is." merge into GPT-2's " Paris" token across the prompt/completion border.
    conv = chat("The capital of France is Par", "is.", kind="completion")
    enc = render(conv, gpt2_tokenizer, resolve_chat_template("plain", gpt2_tokenizer))
    assert enc.meta["boundary_mismatches"] == 1
    assert trained_runs(enc.input_ids, enc.labels) == [gpt2_tokenizer.encode(" Paris.<|endoftext|>")]


def test_non_prefix_template_gets_exact_spans_without_search(tiny_tokenizer, trained_runs):
    # A template that writes a marker after the last message only: prefixes of the conversation are not
    # prefixes of the whole. Before issue 17 its replies were found by searching the text (mask_method
    # "search", which skipped the role header); now they are located by construction, the inference
    # prompts are prefixes, and since this template has no generation prompt the model must write the
    # assistant header itself at inference: it is trained with the reply.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if not add_generation_prompt %}<|endoftext|>{% endif %}"
    )
    enc = render(chat(Q1, A1, Q2, A2), tiny_tokenizer, template)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert enc.meta["mask_method"] == "prefix"
    expected = [tiny_tokenizer.encode("<|im_start|>assistant\n" + a) + [im_end] for a in (A1, A2)]
    assert trained_runs(enc.input_ids, enc.labels) == expected
    assert enc.meta["text"].endswith("<|endoftext|>")  # not trained: written after the last message only


def test_template_that_rewrites_replies_is_a_clear_error(tiny_tokenizer):
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ m['content'] | upper }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(TemplateError, match="cannot locate message"):
        render(chat(Q1, A1, Q2, A2), tiny_tokenizer, template)


def test_truncation_right_left_drop(tiny_tokenizer, trained_runs):
    template = resolve_chat_template(None, tiny_tokenizer)
    conv = chat(Q1, A1, Q2, A2)
    full = render(conv, tiny_tokenizer, template)
    n = len(full.input_ids)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    a2 = tiny_tokenizer.encode(A2) + [im_end]
    # Right: keeping all but the last 2 tokens cuts reply 2 before its <|im_end|>: it is not trained.
    right = render(conv, tiny_tokenizer, template, max_seq_len=n - 2, truncation="truncate_right")
    assert right.input_ids == full.input_ids[: n - 2] and right.meta["truncated"]
    assert trained_runs(right.input_ids, right.labels) == [tiny_tokenizer.encode(A1) + [im_end]]
    # Left: the end is kept, reply 2 whole and trained; reply 1 is gone.
    left = render(conv, tiny_tokenizer, template, max_seq_len=len(a2) + 3, truncation="truncate_left")
    assert left.input_ids == full.input_ids[-(len(a2) + 3) :]
    assert trained_runs(left.input_ids, left.labels) == [a2]
    drop = render(conv, tiny_tokenizer, template, max_seq_len=n - 1, truncation="drop")
    assert drop.meta["dropped"] == "too_long" and drop.input_ids == []
    empty = render(chat(Q1, A1), tiny_tokenizer, template, max_seq_len=5)
    assert empty.meta["dropped"] == "empty_mask"


def test_truncate_left_keeps_bos_and_text_keeps_cut_span(mistral_tokenizer):
    conv = chat("Tell me.", "One two three four five six seven.", kind="completion")
    left = render(
        conv,
        mistral_tokenizer,
        resolve_chat_template("plain", mistral_tokenizer),
        max_seq_len=6,
        truncation="truncate_left",
    )
    assert left.input_ids[0] == mistral_tokenizer.bos_token_id and len(left.input_ids) == 6
    text = Conversation([Message("assistant", "One two three four five six seven.")], kind="text")
    cut = render(text, mistral_tokenizer, resolve_chat_template("plain", mistral_tokenizer), max_seq_len=4)
    assert cut.labels == cut.input_ids  # language modelling: a cut text stays trained


def test_resolve_chat_template(gpt2_tokenizer, mistral_tokenizer, tmp_path):
    with pytest.raises(TemplateError, match="no chat template.*chatml.*plain"):
        resolve_chat_template(None, gpt2_tokenizer)
    assert "<|im_start|>" in resolve_chat_template("chatml", gpt2_tokenizer)
    assert resolve_chat_template("llama3", gpt2_tokenizer) == resolve_chat_template("llama-3", gpt2_tokenizer)
    assert "emit_bos = true" in resolve_chat_template("plain", mistral_tokenizer)
    assert "emit_bos = false" in resolve_chat_template("plain", gpt2_tokenizer)
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_chat_template(str(f), gpt2_tokenizer) == f.read_text()
    with pytest.raises(DataError, match="neither a built-in nor an existing file"):
        resolve_chat_template("chatml2", gpt2_tokenizer)
