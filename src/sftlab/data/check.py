"""``sftlab template check``: does a chat template give exact loss masks? A battery of conversations, one table.

Each conversation of ``battery()`` (single / multi-turn, a system prompt, replies that are role words or
one letter, reasoning in earlier turns, tool calls with object and with JSON-string arguments, unicode)
is rendered and masked as training does, and checked:

- mask exact: two checks that do not use the code that made the mask. The twin of the conversation, with
  every reply replaced by a unique word, must train exactly what an oracle finds by plain string search
  (unique words make search safe): from the end of ``apply_chat_template(messages[:i],
  add_generation_prompt=True)`` to the first end-of-turn marker after the reply. And the conversation's own
  trained text must be the twin's with the unique words replaced back (a reply ``a`` or ``assistant``
  trained where the template writes the same letters in its markup fails this);
- end-of-turn trained: every trained span ends with the template's end-of-turn marker, and it is a token;
- == apply_chat_template: the training text is ``apply_chat_template(messages, tools=..., **kwargs)``;
- prompt prefix: every reply's inference prompt is a prefix of the training text;
- tools native / reasoning: what happened to the tool calls and the reasoning traces.

A record the template cannot render, or whose spans cannot be proven, is ``refused`` with the reason.
``--data FILE`` adds one row for the first records of a data file (counts).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.console import console, say
from sftlab.data.errors import DataError
from sftlab.data.render import RenderSpec, build_render_spec, encode_rendered, render_text
from sftlab.data.types import Conversation, Message

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    },
}


def _call(arguments) -> dict:
    return {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def battery(system: str | None = None) -> list[tuple[str, Conversation]]:
    """The conversations checked (name, conversation); contents differ from each other and from markup.
    ``system``: a system prompt put in front of each (some templates need one)."""
    M = Message

    def conv(*messages, tools=None):
        first = [M("system", system)] if system and messages[0].role != "system" else []
        return Conversation(first + list(messages), source="battery", origin="battery", tools=tools)

    def tool_turns(arguments):
        return (
            M("user", "What is the weather in Paris?"),
            M("assistant", "", tool_calls=[_call(arguments)]),
            M("tool", '{"temperature": 21}', tool_call_id="abcDEF123", name="get_weather"),
            M("assistant", "It is 21 degrees in Paris."),
        )

    return [
        ("single turn", conv(M("user", "What is the capital of France?"), M("assistant", "Paris is the capital."))),
        (
            "multi-turn",
            conv(
                M("user", "Name a colour."),
                M("assistant", "Blue."),
                M("user", "Another one?"),
                M("assistant", "Green."),
            ),
        ),
        ("system prompt", conv(M("system", "Answer briefly."), M("user", "Say hello."), M("assistant", "Hello!"))),
        (
            "role-word replies",
            conv(
                M("user", "Who are you?"), M("assistant", "assistant"), M("user", "Last word?"), M("assistant", "final")
            ),
        ),
        (
            "one-letter replies",
            conv(M("user", "Pick a letter."), M("assistant", "a"), M("user", "Another."), M("assistant", "s")),
        ),
        (
            "reasoning, earlier turns",
            conv(
                M("user", "What is 2+2?"),
                M("assistant", "4", reasoning="Two plus two is four."),
                M("user", "And 3+3?"),
                M("assistant", "6", reasoning="Three plus three is six."),
            ),
        ),
        ("tool call", conv(*tool_turns({"city": "Paris"}), tools=[_WEATHER])),
        ("tool call, string arguments", conv(*tool_turns('{"city": "Paris"}'), tools=[_WEATHER])),
        ("unicode", conv(M("user", "¿Qué tal? 日本語で答えて 🙂"), M("assistant", "Très bien — 元気です 🚀"))),
    ]


@dataclass
class Row:
    """One line of the table: each cell "yes", "no: why", "-" (does not apply) or "refused" (why: ``notes``)."""

    name: str
    mask_exact: str = "-"
    eot_trained: str = "-"
    same_as_apply: str = "-"
    prompt_prefix: str = "-"
    tools_native: str = "-"
    reasoning: str = "-"
    notes: list[str] = field(default_factory=list)

    COLUMNS = (
        "mask exact",
        "end-of-turn trained",
        "== apply_chat_template",
        "prompt prefix",
        "tools native",
        "reasoning",
    )

    def cells(self) -> list[str]:
        return [
            self.mask_exact,
            self.eot_trained,
            self.same_as_apply,
            self.prompt_prefix,
            self.tools_native,
            self.reasoning,
        ]

    @property
    def ok(self) -> bool:
        return not self.mask_exact.startswith("no") and not self.same_as_apply.startswith("no")


def twin(conv: Conversation) -> tuple[Conversation, dict[str, str]]:
    """``conv`` with every assistant reply replaced by a unique word; and word -> original reply."""
    out, words = copy.deepcopy(conv), {}
    for k, m in enumerate(out.messages):
        if m.role == "assistant" and m.content:
            word = f"Qv{k}xJ"
            words[word], m.content = m.content, word
    return out, words


def trained_texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


def oracle_spans(
    tokenizer, template: str, conv: Conversation, spec: RenderSpec, kwargs: dict, messages: list[dict] | None = None
) -> list[tuple[int, int]] | None:
    """What a trained reply of ``conv`` (unique contents) should be, found by plain search; None when the
    template's generation prompt is not a prefix (that row then says so in "prompt prefix"). ``messages``:
    ``conv`` as the template gets it (``Rendered.template_messages``: traces written inline), if not as is."""
    messages = messages or [m.to_dict() for m in conv.messages]
    text = tokenizer.apply_chat_template(messages, tools=conv.tools, chat_template=template, tokenize=False, **kwargs)
    spans = []
    for i, m in enumerate(conv.messages):
        if m.role != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tools=conv.tools, chat_template=template, tokenize=False, add_generation_prompt=True, **kwargs
        )
        if not text.startswith(prompt):
            return None
        # the reply (unique), or for a turn that only calls tools the point where its prompt ends
        at = text.find(m.content, len(prompt)) if m.content else len(prompt)
        after = at + len(m.content or "")
        ends = [p + len(e) for e in spec.eot_strings if (p := text.find(e, after)) >= 0]
        spans.append((len(prompt), min(ends) if ends else after))
    return spans


def check_conversation(name: str, conv: Conversation, tokenizer, template: str, spec: RenderSpec, kwargs: dict) -> Row:
    """One row of the table for one conversation (see the module docstring)."""
    row = Row(name)
    try:
        rendered = render_text(conv, spec)
    except DataError as e:
        row.mask_exact, row.notes = "refused", [f"refused: {e.problem}"]
        if e.field == "data.tool_format":
            row.tools_native = "no"
        return row
    messages = rendered.template_messages(conv)  # traces sftlab wrote inline are inline here too
    try:
        reference = tokenizer.apply_chat_template(
            messages, tools=conv.tools, chat_template=template, tokenize=False, **kwargs
        )
        row.same_as_apply = "yes" if reference == rendered.text else "no: the texts differ"
    except Exception as e:  # noqa: BLE001 - transformers' own failure is a result here
        row.same_as_apply = "no: it fails"
        row.notes.append(f"apply_chat_template fails: {e}")
    row.mask_exact = verify_mask(conv, _spans_of(spec), tokenizer, template, spec, kwargs)
    encoded = encode_rendered([rendered], tokenizer, spec)[0]
    spans_end = all(any(rendered.text[:b].endswith(e) for e in spec.eot_strings) for _, b in rendered.spans)
    row.eot_trained = "yes" if spans_end and encoded.meta["eot_trained"] else ("no: not a token" if spans_end else "no")
    mismatch = rendered.meta.get("prompt_mismatch")
    adds = f"no: + {mismatch['adds']!r}" if mismatch else ""
    row.prompt_prefix = "yes" if mismatch is None else (adds if len(adds) <= 20 else "no (see below)")
    if mismatch is not None:
        row.notes.append(f"the inference prompt of message {mismatch['turn']} goes on with {mismatch['adds']!r}")
    if conv.tools or any(m.tool_calls for m in conv.messages):
        row.tools_native = "yes" if spec.tool_format == "native" else "json_in_content"
    given = sum(1 for m in conv.messages if m.reasoning)
    if given:
        r = rendered.meta["reasoning"]
        inline = f", {r['inline']} inline" if r.get("inline") else ""
        row.reasoning = f"{r['rendered']} of {given} rendered{inline}" + (
            f" ({spec.reasoning})" if spec.reasoning != "template" else ""
        )
    return row


def verify_mask(conv: Conversation, make, tokenizer, template: str, spec: RenderSpec, kwargs: dict) -> str:
    """ "yes", or "no: why", for the trained character spans ``make(conv) -> (text, spans)`` gives: the twin's
    spans equal the oracle's, and ``conv``'s trained text is the twin's with the replies put back. ``make``
    may add the messages as the template got them: ``(text, spans, messages)``."""
    double, words = twin(conv)
    try:
        text, spans = make(conv)[:2]
        twin_text, twin_spans, *given = make(double)
    except DataError as e:
        return f"no: refused ({e.problem})"
    mine = trained_texts(twin_text, twin_spans)
    oracle = oracle_spans(tokenizer, template, double, spec, kwargs, given[0] if given else None)
    if oracle is not None and spec.reasoning_mask == "all" and mine != trained_texts(twin_text, oracle):
        return "no: differs from the oracle"
    back = []
    for piece in mine:
        for word, reply in words.items():
            piece = piece.replace(word, reply)
        back.append(piece)
    if back != trained_texts(text, spans):
        return "no: depends on the replies' text"
    return "yes"


def _spans_of(spec: RenderSpec):
    def make(conv: Conversation):
        r = render_text(conv, spec)
        return r.text, r.spans, r.template_messages(conv)

    return make


def check_template(tokenizer, template: str, spec: RenderSpec, kwargs: dict, conversations=None) -> list[Row]:
    """The table's rows for ``conversations`` (default: the battery)."""
    return [check_conversation(n, c, tokenizer, template, spec, kwargs) for n, c in (conversations or battery())]


def check_records(path: str, tokenizer, template: str, spec: RenderSpec, kwargs: dict, limit: int) -> Row:
    """One row summing the checks over the first ``limit`` records of a data file."""
    from sftlab.config import SourceConfig
    from sftlab.data.encode import detect_source_format
    from sftlab.data.formats import to_conversation
    from sftlab.data.sources import load_source, read_row

    src = SourceConfig(path=path, limit=limit)
    loaded = load_source(src, None)
    fmt = detect_source_format(loaded, src, "skip")
    rows, refused = [], {}
    for i in range(len(loaded.dataset)):
        batch = loaded.dataset[i : i + 1]
        origin = batch["_origin"][0] if "_origin" in batch else loaded.origin(i)
        try:
            conv = to_conversation(read_row(loaded, batch, 0, origin), fmt, src, origin)
        except DataError as e:
            refused[e.reason] = refused.get(e.reason, 0) + 1
            continue
        rows.append(check_conversation(origin, conv, tokenizer, template, spec, kwargs))
    total = Row(f"{Path(path).name} ({len(rows) + sum(refused.values())} records)")

    def count(attr):
        cells = [getattr(r, attr) for r in rows if getattr(r, attr) not in ("-", "refused")]
        return f"{sum(c.startswith('yes') for c in cells)} of {len(cells)}" if cells else "-"

    for attr in ("mask_exact", "eot_trained", "same_as_apply", "prompt_prefix", "tools_native"):
        setattr(total, attr, count(attr))
    done = [r for r in rows if r.reasoning != "-"]
    total.reasoning = f"{len(done)} records with reasoning" if done else "-"
    for r in rows:
        if r.mask_exact == "refused":
            refused[r.notes[0]] = refused.get(r.notes[0], 0) + 1
    total.notes = [f"{n} x {why}" for why, n in refused.items()]
    return total


# ------------------------------------------------------------------------------------------ command line

DESCRIPTION = (
    "check a chat template on a battery of conversations: mask exact, end-of-turn trained, training text == "
    "apply_chat_template, inference prompt a prefix, tools native, reasoning"
)
EXAMPLE = "sftlab template check ../shared/data/tokenizers/qwen3 --chat-template-kwargs '{\"enable_thinking\": false}'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftlab.data.reasoning import REASONING_MASKS, REASONING_MODES
    from sftlab.data.tools import TOOL_FORMATS

    parser.add_argument("tokenizer", metavar="TOKENIZER_OR_MODEL", help="tokenizer or model folder, or a run directory")
    parser.add_argument("--template", help="chatml | llama-3 | mistral | plain | FILE.jinja (default: the tokenizer's)")
    parser.add_argument("--data", metavar="FILE", help="also check the first records of this data file")
    parser.add_argument("--limit", type=int, default=100, help="records of --data checked (default 100)")
    parser.add_argument(
        "--system", help="a system prompt in front of every battery conversation (templates that need one)"
    )
    parser.add_argument("--chat-template-kwargs", metavar="JSON", help="e.g. '{\"enable_thinking\": false}'")
    parser.add_argument("--reasoning", default="template", choices=REASONING_MODES)
    parser.add_argument("--reasoning-mask", default="all", choices=REASONING_MASKS)
    parser.add_argument("--tool-format", default="native", choices=TOOL_FORMATS)


def run(args: argparse.Namespace) -> int:
    """Print the table; 0 when no mask is inexact and every render equals apply_chat_template, else 1."""
    from transformers import AutoTokenizer

    from sftlab.data.inspect import parse_kwargs
    from sftlab.data.templates import TemplateError, resolve_chat_template, template_name

    path = Path(args.tokenizer)
    if (path / "final").is_dir() and not (path / "tokenizer_config.json").is_file():
        path = path / "final"  # a run directory
    if not path.exists() and (args.tokenizer.startswith((".", "/", "~")) or args.tokenizer.count("/") > 1):
        raise DataError(
            f"{args.tokenizer} does not exist",
            field="TOKENIZER_OR_MODEL",
            fix="give a tokenizer or model folder, or a hub id",
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))  # a folder or a hub id; OSError: one error line
    name = args.template
    try:
        template = resolve_chat_template(name, tokenizer)
    except TemplateError:
        if name is not None:
            raise
        name = "chatml"  # no template of its own: check what the error would tell a user to set
        template = resolve_chat_template(name, tokenizer)
        say(f"note: {path} has no chat template; checking the built-in chatml (--template to choose)")
    kwargs = parse_kwargs(args.chat_template_kwargs)
    spec = build_render_spec(
        tokenizer, template, "auto", None, chat_template_kwargs=kwargs, reasoning=args.reasoning,
        reasoning_mask=args.reasoning_mask, tool_format=args.tool_format, name=template_name(name, tokenizer),
    )  # fmt: skip
    rows = check_template(tokenizer, template, spec, kwargs, battery(args.system))
    if args.data:
        rows.append(check_records(args.data, tokenizer, template, spec, kwargs, args.limit))
    print_table(rows, f"{spec.template_name}" + (f" {kwargs}" if kwargs else ""))
    return 0 if all(r.ok for r in rows) else 1


def print_table(rows: list[Row], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), show_lines=False)
    table.add_column("conversation")
    for column in Row.COLUMNS:
        table.add_column(column)
    for r in rows:
        table.add_row(escape(r.name), *[escape(_short(c)) for c in r.cells()])
    out = console(width=max(150, console().width), highlight=False)
    out.print(table)
    for r in rows:
        for note in r.notes:
            out.print(f"{r.name}: {note}", markup=False, soft_wrap=True)


def _short(cell: str) -> str:
    """A table cell (the notes under the table say the rest)."""
    return cell if len(cell) <= 30 else cell[:27] + "..."
