"""Golden loss masks on real chat templates (issue 17).

- The four real tokenizers of ../shared (Qwen3, DeepSeek-R1-Distill, gpt-oss, Llama 3.1): hand-written
  trained texts for every battery conversation, ids equal to ``apply_chat_template`` (same kwargs), the
  end-of-turn token trained.
- Every template of ../shared/data/templates: each battery conversation trains exactly what an oracle finds
  (``sftlab.data.check``: plain search on unique replies + independence from the replies' text), renders
  byte-identical to ``apply_chat_template(messages, tools=...)``, or is refused with a specific message.
- Negative control: the search fallback that render.py used before (kept here only) fails the same check.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from sftlab.data.check import battery, check_template, verify_mask
from sftlab.data.errors import TemplateError
from sftlab.data.masks import select_trained
from sftlab.data.render import build_render_spec, encode_rendered, render_text, resolve_chat_template

CONVERSATIONS = dict(battery())
TOOL_ROWS = ("tool call", "tool call, string arguments")


@pytest.fixture(scope="session")
def real_tokenizer(shared_data):
    from transformers import AutoTokenizer

    @functools.cache
    def load(name: str):
        return AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / name))

    return load


def spec_for(tok, kwargs=None, **options):
    return build_render_spec(tok, resolve_chat_template(None, tok), chat_template_kwargs=kwargs or {}, **options)


def trained(conv_name: str, spec) -> list[str]:
    r = render_text(CONVERSATIONS[conv_name], spec)
    return [r.text[a:b] for a, b in r.spans]


# ------------------------------------------------------------------------------------------ four tokenizers

QWEN3 = {
    "single turn": ["<think>\n\n</think>\n\nParis is the capital.<|im_end|>"],
    "multi-turn": ["Blue.<|im_end|>", "<think>\n\n</think>\n\nGreen.<|im_end|>"],
    "system prompt": ["<think>\n\n</think>\n\nHello!<|im_end|>"],
    "role-word replies": ["assistant<|im_end|>", "<think>\n\n</think>\n\nfinal<|im_end|>"],
    "one-letter replies": ["a<|im_end|>", "<think>\n\n</think>\n\ns<|im_end|>"],
    # the template keeps the reasoning of the turn after the last user message only
    "reasoning, earlier turns": ["4<|im_end|>", "<think>\nThree plus three is six.\n</think>\n\n6<|im_end|>"],
    "tool call": [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "<think>\n\n</think>\n\nIt is 21 degrees in Paris.<|im_end|>",
    ],
    "unicode": ["<think>\n\n</think>\n\nTrès bien — 元気です 🚀<|im_end|>"],
}
R1_EOS = "<｜end▁of▁sentence｜>"
R1 = {  # the template strips every reasoning trace; the generation prompt adds <think>\n (reported)
    "single turn": [f"Paris is the capital.{R1_EOS}"],
    "multi-turn": [f"Blue.{R1_EOS}", f"Green.{R1_EOS}"],
    "role-word replies": [f"assistant{R1_EOS}", f"final{R1_EOS}"],
    "one-letter replies": [f"a{R1_EOS}", f"s{R1_EOS}"],
    "reasoning, earlier turns": [f"4{R1_EOS}", f"6{R1_EOS}"],
}
FINAL = "<|channel|>final<|message|>"
GPT_OSS = {  # the channel header is the model's to write after "<|start|>assistant": trained in every turn
    "single turn": [f"{FINAL}Paris is the capital.<|return|>"],
    "multi-turn": [f"{FINAL}Blue.<|end|>", f"{FINAL}Green.<|return|>"],
    "role-word replies": [f"{FINAL}assistant<|end|>", f"{FINAL}final<|return|>"],
    "one-letter replies": [f"{FINAL}a<|end|>", f"{FINAL}s<|return|>"],
    "reasoning, earlier turns": [
        f"{FINAL}4<|end|>",
        f"<|channel|>analysis<|message|>Three plus three is six.<|end|><|start|>assistant{FINAL}6<|return|>",
    ],
    "tool call": [
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        f"{FINAL}It is 21 degrees in Paris.<|return|>",
    ],
}
LLAMA = {
    "single turn": ["Paris is the capital.<|eot_id|>"],
    "role-word replies": ["assistant<|eot_id|>", "final<|eot_id|>"],
    "one-letter replies": ["a<|eot_id|>", "s<|eot_id|>"],
    # the template has no place for reasoning: the earlier trace is left out, the final reply's (which the
    # model writes at inference) is written inline, as the data gives it
    "reasoning, earlier turns": ["4<|eot_id|>", "<think>\nThree plus three is six.\n</think>\n\n6<|eot_id|>"],
    "tool call": [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is 21 degrees in Paris.<|eot_id|>",
    ],
    "tool call, string arguments": [
        '{"name": "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}<|eot_id|>',
        "It is 21 degrees in Paris.<|eot_id|>",
    ],
}
GOLDEN = [
    ("qwen3", {}, QWEN3),
    ("deepseek-r1-distill-qwen", {}, R1),
    ("gpt-oss-20b", {}, GPT_OSS),
    ("llama-3.1-instruct", {}, LLAMA),
    (
        "qwen3",
        {"enable_thinking": False},
        {"single turn": ["Paris is the capital.<|im_end|>"], "unicode": ["Très bien — 元気です 🚀<|im_end|>"]},
    ),
]


@pytest.mark.parametrize("name,kwargs,golden", GOLDEN, ids=[f"{g[0]}{'-' + str(g[1]) if g[1] else ''}" for g in GOLDEN])
def test_golden_trained_texts_on_real_tokenizers(real_tokenizer, name, kwargs, golden):
    tok = real_tokenizer(name)
    spec = spec_for(tok, kwargs)
    for conv_name, expected in golden.items():
        assert trained(conv_name, spec) == expected, conv_name
    for conv_name, conv in battery():
        try:
            r = render_text(conv, spec)
        except TemplateError:
            continue
        enc = encode_rendered([r], tok, spec)[0]
        messages = r.template_messages(conv)  # with the traces sftlab wrote inline (Llama 3.1)
        assert enc.input_ids == tok.apply_chat_template(messages, tools=conv.tools, **kwargs)["input_ids"], conv_name
        # every trained run ends with the end-of-turn token, and that token is trained
        ends = [
            i
            for i, lab in enumerate(enc.labels)
            if lab != -100 and (i + 1 == len(enc.labels) or enc.labels[i + 1] == -100)
        ]
        assert all(enc.input_ids[i] in spec.eot_ids for i in ends), conv_name
        assert enc.meta["eot_trained"]


def test_prompt_mismatch_reported_on_deepseek_r1_and_qwen3_history(real_tokenizer):
    r1 = spec_for(real_tokenizer("deepseek-r1-distill-qwen"))
    meta = render_text(CONVERSATIONS["single turn"], r1).meta
    assert meta["prompt_mismatch"] == {"turn": 1, "last": True, "adds": "<think>\n"}
    qwen = spec_for(real_tokenizer("qwen3"), {"enable_thinking": False})
    r = render_text(CONVERSATIONS["multi-turn"], qwen)
    assert r.method == "diverged" and r.meta["prompt_mismatch"]["last"] is False  # only the earlier turn
    assert [r.text[a:b] for a, b in r.spans] == ["Blue.<|im_end|>", "Green.<|im_end|>"]
    assert render_text(CONVERSATIONS["single turn"], qwen).method == "prefix"


def test_tool_calls_refused_where_the_template_drops_them(real_tokenizer):
    spec = spec_for(real_tokenizer("deepseek-r1-distill-qwen"))
    with pytest.raises(
        TemplateError,
        match=r"battery: field 'data.tool_format': .*deepseek-r1-distill-qwen drops the tool calls of message 1",
    ) as e:
        render_text(CONVERSATIONS["tool call"], spec)
    assert "json_in_content" in str(e.value)


# ------------------------------------------------------------------------------------------ 35 templates

TEMPLATES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "templates"
TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("*.jinja")) if TEMPLATES_DIR.is_dir() else []
# (file name prefix, bos, eos) of each family; a template plus its special tokens is all a mask needs
FAMILY = [
    ("Apertus", "<s>", "</s>"),
    ("Cohere", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    ("Mistral", "<s>", "</s>"),
    ("mistralai", "<s>", "</s>"),
    ("unsloth-mistral", "<s>", "</s>"),
    ("Nous", "<|begin_of_text|>", "<|im_end|>"),
    ("deepseek", "<｜begin▁of▁sentence｜>", R1_EOS),
    ("llama-cpp-deepseek", "<｜begin▁of▁sentence｜>", R1_EOS),
    ("fireworks", "<|begin_of_text|>", "<|eot_id|>"),
    ("meetkai", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama", "<|begin_of_text|>", "<|eot_id|>"),
    ("google", "<bos>", "<eos>"),
    ("llama-cpp-rwkv", "<s>", "</s>"),
    ("microsoft", "<s>", "<|endoftext|>"),
    ("GLM", None, "<|endoftext|>"),
    ("openai", "<|startoftext|>", "<|return|>"),
    ("ibm", None, "<|end_of_text|>"),
    ("NVIDIA", "<s>", "<SPECIAL_12>"),
    ("ByteDance", None, "<seed:eos>"),
]
SPECIAL = re.compile(r"<[|｜][^<>\s'\"]{1,40}[|｜]>|</?[a-z_:]+>|\[/?[A-Z_]+\]|<SPECIAL_[0-9]+>")
# What a refusal may say: the template's own failure (it cannot render the conversation at all, e.g. it
# needs a tools list, string arguments, alternating roles), a template without native tool support, or a
# tool call after which the template writes no end-of-turn marker.
REFUSALS = re.compile(
    r"the chat template failed on this conversation: .+"
    r"|drops the (tool calls of message \d|tool result of message \d|tools list)"
    r"|no end-of-turn marker follows the tool calls"
)


def template_tokenizer(tiny_dir, path: Path):
    """The tiny BPE tokenizer with the template's special tokens, its family's bos / eos, and the template."""
    from transformers import AutoTokenizer

    text = path.read_text(encoding="utf-8")
    bos, eos = next(((b, e) for k, b, e in FAMILY if path.name.startswith(k)), (None, "<|im_end|>"))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    extra = sorted(set(SPECIAL.findall(text)) - {bos, eos})
    tok.add_special_tokens(
        {"additional_special_tokens": extra, "eos_token": eos, **({"bos_token": bos} if bos else {})}
    )
    tok.chat_template = text
    return tok


@pytest.fixture(scope="module")
def template_rows(shared_data, tiny_tokenizer_dir):
    out = {}
    for path in TEMPLATE_FILES:
        tok = template_tokenizer(tiny_tokenizer_dir, path)
        spec = build_render_spec(tok, tok.chat_template, name=path.stem)
        out[path.stem] = check_template(tok, tok.chat_template, spec, {})
    return out


def test_every_shared_template_masks_exactly_or_refuses(template_rows):
    assert len(template_rows) == 35
    exact = 0
    for name, rows in template_rows.items():
        for row in rows:
            if row.mask_exact == "refused":
                assert REFUSALS.search(row.notes[0]), (name, row.name, row.notes)
                continue
            assert row.mask_exact == "yes", (name, row.name, row.mask_exact)
            assert row.same_as_apply == "yes", (name, row.name, row.same_as_apply)
            exact += 1
    # 32 of the 35 render plain chats (the tool-use templates of Cohere Command R+ and Hermes 3 need a tools
    # list, firefunction-v2 needs its own variables); 259 of the 315 conversations are exact, the other 56
    # refused (the README says so: a change here is a change to document)
    rendered = {n for n, rows in template_rows.items() if rows[0].mask_exact == "yes"}
    assert len(rendered) == 32 and exact == 259, (len(rendered), exact)


def test_tool_calls_byte_identical_where_the_template_supports_tools(template_rows):
    native = [
        (n, r.name)
        for n, rows in template_rows.items()
        for r in rows
        if r.name in TOOL_ROWS and r.tools_native == "yes"
    ]
    for name, rows in template_rows.items():
        for r in rows:
            if r.name in TOOL_ROWS and r.tools_native == "yes":
                assert r.same_as_apply == "yes" and r.mask_exact == "yes", (name, r.name)
    supported = {n for n, _ in native}
    for family in ("Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct", "openai-gpt-oss-120b", "moonshotai-Kimi-K2",
                   "unsloth-mistral-Devstral-Small-2507", "mistralai-Mistral-Nemo-Instruct-2407", "GLM-4.6"):  # fmt: skip
        assert family in supported, family
    assert len(supported) >= 18


def test_inference_prompt_mismatches_are_the_known_ones(template_rows):
    """A template whose generation prompt opens a reasoning block its training text never has (DeepSeek-R1,
    QwQ), or that writes history differently (Mistral Nemo's system prompt, Nemotron) is reported."""
    mismatched = {n for n, rows in template_rows.items() for r in rows if r.prompt_prefix.startswith("no")}
    assert {
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
        "Qwen-QwQ-32B",
        "mistralai-Mistral-Nemo-Instruct-2407",
    } <= mismatched
    assert not mismatched & {"Qwen-Qwen3-0.6B", "openai-gpt-oss-120b", "meta-llama-Llama-3.1-8B-Instruct"}


# what the README says of the 35 templates: the ones without a native tool format, and the ones whose replies
# train no end-of-turn token (file name prefix -> how the README names it)
NO_NATIVE_TOOLS = {
    "deepseek-ai-DeepSeek-R1": "DeepSeek R1",
    "deepseek-ai-DeepSeek-R1-Distill": "R1-Distill",
    "deepseek-ai-DeepSeek-V3.1": "DeepSeek-V3.1",
    "microsoft-Phi-3.5": "Phi-3.5/4",
    "microsoft-Phi-4": "Phi-3.5/4",
    "HuggingFaceTB-SmolLM2": "SmolLM2/3",
    "HuggingFaceTB-SmolLM3": "SmolLM2/3",
    "ibm-granite-granite-3.3": "Granite 3.3",
    "llama-cpp-rwkv": "RWKV",
}
NO_END_OF_TURN = {"Apertus": "Apertus", "GLM-4.6": "GLM-4.6", "llama-cpp-rwkv-world": "RWKV World"}


def readme_sentence(start: str) -> str:
    text = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").split())
    at = text.index(start)
    return text[at : text.index(". ", at)]


def test_the_readme_says_what_these_tests_find(template_rows):
    def named(names, prefixes):
        return {p for n in names for p in prefixes if n.startswith(p)} | {n for n in names if not any(n.startswith(p) for p in prefixes)}  # fmt: skip

    no_tools = {n for n, rows in template_rows.items() for r in rows if "drops the" in (r.notes or [""])[0]}
    assert named(no_tools, NO_NATIVE_TOOLS) == set(NO_NATIVE_TOOLS), no_tools
    sentence = readme_sentence("missing native tool format")
    assert all(name in sentence for name in NO_NATIVE_TOOLS.values()), sentence
    no_eot = {n for n, rows in template_rows.items() for r in rows if r.mask_exact == "yes" and r.eot_trained != "yes"}
    assert named(no_eot, NO_END_OF_TURN) == set(NO_END_OF_TURN), no_eot
    sentence = readme_sentence("Some templates write none")
    assert all(name in sentence for name in NO_END_OF_TURN.values()), sentence
    assert "the tools list and system text only under `data.mask: all`" in readme_sentence("Tool results are never")
    assert "259 of the 315" in readme_sentence("The same battery runs")


def test_mask_all_trains_the_tools_list_and_headers_but_no_tool_result(real_tokenizer):
    """What the README says of data.mask: all: every token but the contents of tool results (and of train:
    false messages) is trained: the tools list, system and user text, the tool result's header."""
    tok = real_tokenizer("qwen3")
    r = render_text(CONVERSATIONS["tool call"], spec_for(tok, mask_policy="all"))
    trained = "".join(r.text[a:b] for a, b in r.spans)
    assert '{"temperature": 21}' not in trained and '{"temperature": 21}' in r.text
    assert "# Tools" in trained and "What is the weather in Paris?" in trained and "<tool_response>" in trained


# ------------------------------------------------------------------------------------------ negative control


def search_spans(conv, spec):
    """The fallback render.py had before issue 17 (kept here only, as a negative control): locate each
    message's content by its first occurrence after the previous one; a trained reply extends to the
    end-of-turn marker after it."""
    full = render_text(conv, spec).text
    flags = select_trained(conv.messages, "assistant")
    cursor, spans = 0, []
    for i, m in enumerate(conv.messages):
        found, text = -1, m.content or ""
        for candidate in (text, text.strip()):
            if candidate and (found := full.find(candidate, cursor)) >= 0:
                text = candidate
                break
        if found < 0:
            continue
        end = found + len(text)
        if flags[i]:
            marks = [(full.find(e, end), e) for e in spec.eot_strings]
            marks = [(p, e) for p, e in marks if p >= 0 and not full[end:p].strip()]
            spans.append((found, min(marks)[0] + len(min(marks)[1]) if marks else end))
        cursor = end
    return full, spans


@pytest.mark.parametrize("name", ["qwen3", "gpt-oss-20b"])
def test_the_old_search_fallback_fails_the_same_check(real_tokenizer, name):
    tok = real_tokenizer(name)
    spec = spec_for(tok)
    template = resolve_chat_template(None, tok)
    verdicts = {
        conv_name: verify_mask(CONVERSATIONS[conv_name], lambda c: search_spans(c, spec), tok, template, spec, {})
        for conv_name in ("role-word replies", "one-letter replies", "single turn")
    }
    assert verdicts["role-word replies"].startswith("no") or verdicts["one-letter replies"].startswith("no"), verdicts
    # ... while the construction passes them all
    for conv_name in verdicts:
        make = lambda c: (lambda r: (r.text, r.spans))(render_text(c, spec))  # noqa: E731
        assert verify_mask(CONVERSATIONS[conv_name], make, tok, template, spec, {}) == "yes"


def test_search_fallback_trains_markup_on_a_one_letter_reply(real_tokenizer):
    """What the issue saw: the reply "a" is found inside "<|im_start|>assistant", so the header is trained."""
    spec = spec_for(real_tokenizer("qwen3"))
    text, spans = search_spans(CONVERSATIONS["one-letter replies"], spec)
    assert text[spans[0][0] : spans[0][1]] != "a<|im_end|>"
    assert trained("one-letter replies", spec)[0] == "a<|im_end|>"
