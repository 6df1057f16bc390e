"""Chat templates: which Jinja text is used, how it is rendered, and what it can express.

The template used for training is the one saved with the model (``tokenizer.chat_template``), and it is
rendered exactly as ``tokenizer.apply_chat_template(messages, tokenize=False)`` renders it (same sandboxed
Jinja environment, same variables: the tokenizer's special tokens). The rendered text is always tokenised
with ``add_special_tokens=False``: the template writes bos itself where the model needs it (Llama 3,
Mistral, and ``plain`` for tokenizers that add bos to plain text), so there is never a second bos.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from sftlab.data.errors import TEMPLATE_ERROR, TemplateError
from sftlab.data.types import Conversation

BUILTIN_TEMPLATES = ("chatml", "llama-3", "mistral", "plain")
ALIASES = {"llama3": "llama-3", "llama-3.1": "llama-3", "llama-3.2": "llama-3", "qwen": "chatml"}
# End-of-turn markers of common templates; a trained turn's span ends with the last one it contains.
KNOWN_END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<|END_OF_TURN_TOKEN|>",
    "<|return|>",
)
_PLAIN_BOS_OFF = "{%- set emit_bos = false %}"
_PROBE = "zq_sftlab_probe_zq"


def builtin_template(name: str) -> str:
    """The text of a built-in template (``chatml``, ``llama-3``, ``mistral``, ``plain``)."""
    name = ALIASES.get(name, name)
    if name not in BUILTIN_TEMPLATES:
        raise TemplateError(
            f"unknown built-in template {name!r}",
            reason=TEMPLATE_ERROR,
            field="data.template",
            fix=f"use one of {', '.join(BUILTIN_TEMPLATES)} or the path of a .jinja file",
        )
    return resources.files("sftlab").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when ``tokenizer("a")`` starts with bos (Llama, Mistral), False for GPT-2 style tokenizers."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def resolve_chat_template(template: str | None, tokenizer) -> str:
    """The Jinja chat template text used for training (and saved with the model).

    ``None``: the tokenizer's own template (an error when it has none); a built-in name; or a path to a
    ``.jinja`` file. ``plain`` emits bos exactly when the tokenizer adds bos to plain text by itself.
    """
    if template is None:
        own = tokenizer.chat_template
        if isinstance(own, dict):  # tokenizers with several named templates
            own = own.get("default")
        if not own:
            raise TemplateError(
                f"the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '')}) has "
                "no chat "
                "template",
                reason=TEMPLATE_ERROR,
                field="data.template",
                fix="set data.template: chatml (chat data) or plain (base models, prompt/completion data)",
            )
        return own
    name = ALIASES.get(template, template)
    if name in BUILTIN_TEMPLATES:
        text = builtin_template(name)
        if name == "plain" and tokenizer_adds_bos(tokenizer):
            text = text.replace(_PLAIN_BOS_OFF, "{%- set emit_bos = true %}")
        return text
    path = Path(template).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise TemplateError(
        f"template {template!r} is neither a built-in nor an existing file",
        reason=TEMPLATE_ERROR,
        field="data.template",
        fix=f"use one of {', '.join(BUILTIN_TEMPLATES)} or a .jinja file path",
    )


@functools.lru_cache(maxsize=16)
def compile_template(template_text: str):
    """The compiled template, from the same sandboxed Jinja environment ``apply_chat_template`` uses."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # private in transformers; fall back to an equivalent environment
        return _compile_fallback(template_text)
    try:
        return _compile_jinja_template(template_text)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise TemplateError(
            f"the chat template does not compile: {e}",
            reason=TEMPLATE_ERROR,
            field="data.template",
            fix="correct the Jinja syntax",
        ) from None


def _compile_fallback(template_text: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_text)


def template_variables(tokenizer) -> dict[str, Any]:
    """Variables a template sees besides messages/tools: the special tokens, as in ``apply_chat_template``."""
    return dict(tokenizer.special_tokens_map)


def render_template(
    template_text: str,
    messages: list[dict],
    variables: dict[str, Any],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> str:
    """Render ``messages`` (dicts without None values); template failures become ``TemplateError``."""
    compiled = compile_template(template_text)
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except Exception as e:  # raise_exception() in the template, undefined variables, type errors
        raise TemplateError(
            f"the chat template failed on this conversation: {e}",
            reason=TEMPLATE_ERROR,
            field="messages",
            fix="fix the conversation (roles, system prompt), set data.sources[].system, or choose another "
            "data.template (chatml, llama-3, mistral, plain)",
        ) from None


@functools.lru_cache(maxsize=16)
def template_features(template_text: str, variables_json: str) -> frozenset[str]:
    """What the template renders, found by probing: tools, tool_calls, tool_role, generation_prompt.

    Probing (render a tiny conversation holding a marker, look for the marker) works for any template,
    including ones that silently drop roles they do not know.
    """
    variables = json.loads(variables_json)
    system = [{"role": "system", "content": "s"}]
    user = [{"role": "user", "content": "u"}]
    call = {"type": "function", "function": {"name": _PROBE, "arguments": {}}}
    probes = {
        "tools": (user, {"tools": [{"type": "function", "function": {"name": _PROBE, "parameters": {}}}]}),
        "tool_calls": (user + [{"role": "assistant", "content": "", "tool_calls": [call]}], {}),
        "tool_role": (
            user + [{"role": "assistant", "content": "a"}, {"role": "tool", "content": _PROBE}],
            {},
        ),
    }
    found = set()
    for feature, (messages, extra) in probes.items():
        for prefix in ([], system):  # some templates insist on a system message
            try:
                if _PROBE in render_template(template_text, prefix + messages, variables, **extra):
                    found.add(feature)
                break
            except TemplateError:
                continue
    for prefix in ([], system):
        try:
            with_gen = render_template(template_text, prefix + user, variables, add_generation_prompt=True)
            if with_gen != render_template(template_text, prefix + user, variables):
                found.add("generation_prompt")
            break
        except TemplateError:
            continue
    return frozenset(found)


def to_template_messages(
    conv: Conversation, features: frozenset[str]
) -> tuple[list[dict], list[dict] | None, int]:
    """(messages, tools, shift) as the template should see them, adapted to what it can express.

    A template that drops tool calls, tool outputs or tool schemas would silently train on conversations
    missing them, so: tool calls become JSON lines in the content, tool outputs become user turns, tool
    schemas go into the system prompt. Message i of the conversation is message ``i + shift`` of the result
    (shift is 1 when a system message had to be added for the tool schemas).
    """
    out: list[dict] = []
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            if "tool_calls" in features:
                d["tool_calls"] = m.tool_calls
            else:
                calls = "\n".join(json.dumps(c.get("function", c), ensure_ascii=False) for c in m.tool_calls)
                d["content"] = f"{m.content}\n{calls}" if m.content else calls
        if m.role == "tool" and "tool_role" not in features:
            d["role"] = "user"
        out.append(d)
    tools, shift = conv.tools or None, 0
    if tools and "tools" not in features:
        listing = "You can call these tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
            shift = 1
        tools = None
    return out, tools, shift


def end_of_turn_strings(tokenizer, template_text: str) -> tuple[str, ...]:
    """Markers that close a turn: known end-of-turn strings the template writes, plus the eos token."""
    found = [s for s in KNOWN_END_OF_TURN if s in template_text]
    eos = tokenizer.eos_token
    if eos and eos not in found:
        found.append(eos)
    return tuple(found)


def end_of_turn_ids(tokenizer, eot_strings: tuple[str, ...]) -> frozenset[int]:
    """Ids of the end-of-turn markers that are single tokens (a marker split into pieces is no stop token)."""
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[s] for s in eot_strings if s in vocab)


def split_markers(tokenizer, eot_strings: tuple[str, ...]) -> list[str]:
    """End-of-turn markers the tokenizer splits into several tokens (e.g. ``<|im_end|>`` with GPT-2)."""
    vocab = tokenizer.get_vocab()
    return [s for s in eot_strings if s not in vocab]
