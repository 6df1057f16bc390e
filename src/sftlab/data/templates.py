"""Chat templates: which Jinja text is used, how it is rendered, and what it can express.

The template used for training is the one saved with the model (``tokenizer.chat_template``), and it is
rendered exactly as ``tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)``
renders it: same sandboxed Jinja environment, same variables (the tokenizer's special tokens plus
``data.chat_template_kwargs``), same messages (keys whose value is None dropped, a reasoning trace under both
``reasoning_content`` and ``thinking``, as transformers 5 does). ``bake_template_kwargs`` writes the kwargs
into the template saved with the model, so inference renders what training rendered. The rendered text is
always tokenised with ``add_special_tokens=False``: the template writes bos itself where the model needs it
(Llama 3, Mistral, and ``plain`` for tokenizers that add bos to plain text), so there is never a second bos.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from sftlab.data.errors import TEMPLATE_ERROR, TemplateError
from sftlab.data.reasoning import REASONING_FIELDS

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
    "<|call|>",
    "<｜end▁of▁sentence｜>",
    "<|assistant_end|>",
    "<seed:eos>",
    "<SPECIAL_12>",
)
# GLM 4.x closes a reply with the next turn's header (its generation config stops on both). Zephyr, TinyLlama
# and StableLM chats write the same "<|user|>" header but close turns with eos: these count only for a
# template that writes no other marker and no eos_token.
HEADER_END_OF_TURN = ("<|user|>", "<|observation|>")
# Names a template sees besides data.chat_template_kwargs; a kwarg may not replace them.
RESERVED_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")
_KWARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_BOS_OFF = "{%- set emit_bos = false %}"
_PROBE = "zq_sftlab_probe_zq"
_PROBE_RESULT = "zq_sftlab_result_zq"


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


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as ``apply_chat_template`` hands them to the template: keys whose value is None dropped
    (transformers 5: ``content: None`` is an absent key), and a reasoning trace under both
    ``reasoning_content`` and ``thinking`` (gpt-oss reads the latter)."""
    out = []
    for m in messages:
        d = {k: v for k, v in m.items() if v is not None}
        reasoning = next((d[k] for k in REASONING_FIELDS if k in d), None)
        if reasoning is not None:
            d = {"thinking": reasoning, **d, "reasoning_content": reasoning}
        out.append(d)
    return out


def render_template(
    template_text: str,
    messages: list[dict],
    variables: dict[str, Any],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> str:
    """Render ``messages`` exactly as ``apply_chat_template(messages, tools=tools, **kwargs)`` renders them
    (``variables``: the special tokens plus data.chat_template_kwargs); failures become ``TemplateError``."""
    compiled = compile_template(template_text)
    try:
        return compiled.render(
            messages=template_messages(messages),
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except Exception as e:  # raise_exception() in the template, undefined variables, type errors
        fix = (
            "fix the conversation (roles, system prompt, tool call ids), set data.sources[].system, or "
            "choose another data.template (chatml, llama-3, mistral, plain)"
        )
        if "content" in str(e) and any(m.get("content") is None for m in messages):
            fix = 'this template needs text in every turn: write content: "" on turns that only call tools; or ' + fix
        if "function" in str(e) and tools and any(isinstance(t, dict) and "function" not in t for t in tools):
            fix = ("this template reads tools in OpenAI form: [{type: function, function: {name, description, "
                   "parameters}}]; or " + fix)  # fmt: skip
        raise TemplateError(
            f"the chat template failed on this conversation: {e}", reason=TEMPLATE_ERROR, field="messages", fix=fix
        ) from None


def check_template_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``data.chat_template_kwargs`` validated: names are identifiers that do not replace what every template
    sees, values plain data (they are written into the saved template by ``bake_template_kwargs``)."""
    for name, value in kwargs.items():
        problem = None
        if not isinstance(name, str) or not _KWARG_NAME.fullmatch(name):
            problem = f"{name!r} is not a template variable name (letters, digits, _)"
        elif name in RESERVED_VARIABLES:
            problem = f"{name!r} is set by sftlab for every render"
        elif not _bakeable(name):
            problem = (
                f"{name!r} is a Jinja keyword or a name Jinja defines itself (true, none, not, range, dict, "
                "namespace, ...): the template saved with the model could not set it"
            )
        elif not _is_plain(value):
            problem = f"{name}: {value!r} is not plain data (text, number, true/false, null, lists, mappings)"
        if problem:
            raise TemplateError(
                problem, field="data.chat_template_kwargs", fix="e.g. data.chat_template_kwargs: {enable_thinking: false}"
            )
    return dict(kwargs)


@functools.lru_cache(maxsize=64)
def _bakeable(name: str) -> bool:
    """Can ``bake_template_kwargs`` give ``name`` a default (not a Jinja keyword like ``not`` / ``true``, nor
    a global like ``range``, which ``is not defined`` never sees as missing)?"""
    probe = f"{{%- if {name} is not defined %}}{{%- set {name} = 'zq' %}}{{%- endif %}}{{{{ {name} }}}}"
    try:
        return compile_template(probe).render() == "zq"
    except Exception:  # noqa: BLE001 - a keyword does not compile
        return False


def _is_plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def bake_template_kwargs(template_text: str, kwargs: dict[str, Any]) -> str:
    """The template with ``kwargs`` as the defaults of its variables, so that a plain
    ``apply_chat_template(messages)`` (sftlab generate / chat / eval, transformers, vLLM) renders what
    training rendered with the kwargs; an explicit kwarg at inference still wins.

    >>> bake_template_kwargs("{{ x }}", {"x": False})
    '{%- if x is not defined %}{%- set x = false %}{%- endif %}\\n{{ x }}'
    """
    lines = [
        f"{{%- if {k} is not defined %}}{{%- set {k} = {_jinja_literal(v)} %}}{{%- endif %}}"
        for k, v in sorted(check_template_kwargs(kwargs).items())
    ]
    return "".join(lines) + ("\n" if lines else "") + template_text


def _jinja_literal(value: Any) -> str:
    """A Jinja expression for plain data: JSON, with true / false / none spelled as Jinja spells them."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        # a JSON string is a valid Jinja string literal; non-ASCII stays as is (Jinja would read "\\ud83d"
        # escapes as two lone surrogates)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{_jinja_literal(k)}: {_jinja_literal(v)}" for k, v in value.items()) + "}"


def template_name(template: str | None, tokenizer) -> str:
    """How errors and reports name the template: the built-in or file name, or the tokenizer's own."""
    if template is not None:
        return ALIASES.get(template, template)
    where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"the chat template of {where}"


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": _PROBE,
        "description": "probe",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "x"}}},
    },
}


def _probe_calls(content) -> list[dict]:
    call = {"id": "abcdEFG12", "type": "function", "function": {"name": _PROBE, "arguments": {"x": "1"}}}
    text = {**call, "function": {**call["function"], "arguments": '{"x": "1"}'}}
    return [
        {"role": "assistant", "content": content, "tool_calls": [c]} for c in (call, text)
    ]


@functools.lru_cache(maxsize=16)
def template_features(template_text: str, variables_json: str) -> frozenset[str]:
    """What the template renders, found by probing: tools, tool_calls, tool_role, generation_prompt.

    Probing (render a tiny conversation holding a marker, look for the marker) works for any template,
    including ones that silently drop roles they do not know. Each feature is tried in the shapes real
    templates insist on (with and without a system turn, content null or empty, arguments as an object or
    a JSON string, a 9-character call id, a full tool schema); one rendering is enough.
    """
    variables = json.loads(variables_json)
    system = [{"role": "system", "content": "s"}]
    user = [{"role": "user", "content": "u"}]
    result = {"role": "tool", "content": _PROBE_RESULT, "tool_call_id": "abcdEFG12", "name": _PROBE}
    probes = {
        "tools": (_PROBE, [(user, [_PROBE_TOOL])]),
        "tool_calls": (_PROBE, [(user + [c], None) for content in (None, "") for c in _probe_calls(content)]),
        "tool_role": (
            _PROBE_RESULT,
            [(user + [c, result], None) for content in ("", None) for c in _probe_calls(content)]
            + [(user + [{"role": "assistant", "content": "a"}, result], None)],
        ),
    }
    found = set()
    for feature, (marker, attempts) in probes.items():
        for messages, tools in attempts:
            if any(marker in _try_render(template_text, p + messages, variables, tools) for p in ([], system)):
                found.add(feature)
                break
    for prefix in ([], system):
        try:
            with_gen = render_template(template_text, prefix + user, variables, add_generation_prompt=True)
            without = render_template(template_text, prefix + user, variables)
            if len(with_gen) > len(without) and with_gen.startswith(without):  # a header is appended
                found.add("generation_prompt")
            break
        except TemplateError:
            continue
    return frozenset(found)


def _try_render(template_text: str, messages: list[dict], variables: dict, tools) -> str:
    try:
        return render_template(template_text, messages, variables, tools=tools)
    except TemplateError:
        return ""


def end_of_turn_strings(tokenizer, template_text: str) -> tuple[str, ...]:
    """Markers that close a turn: known end-of-turn strings the template writes, plus the eos token (GLM's
    next-turn headers only where there is nothing else, see ``HEADER_END_OF_TURN``). A trained reply ends
    with the first of them after its last field (spans.py); the first one is what eval stops on.

    >>> from types import SimpleNamespace
    >>> end_of_turn_strings(SimpleNamespace(eos_token="</s>"), "{{ '<|user|>' + m.content + eos_token }}")
    ('</s>',)
    """
    found = [s for s in KNOWN_END_OF_TURN if s in template_text]
    if not found and "eos_token" not in template_text:
        found = [s for s in HEADER_END_OF_TURN if s in template_text]
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
