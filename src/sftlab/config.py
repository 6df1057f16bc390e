"""Typed run configuration: YAML file + ``--set a.b=c`` overrides -> frozen dataclasses.

Every field has a default and a one-line doc (the comment after it, also shown by ``sftlab config``).
Unknown keys are errors that name the closest valid key; wrong types and values say what is allowed.
Config text is parsed with ``yaml.safe_load`` only (never evaluated).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what is wrong and how to fix it."""


# ----------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SourceConfig:
    path: str = ""  # file, folder, or Hugging Face dataset id
    format: str = "auto"  # auto | text | prompt_completion | alpaca | messages | sharegpt | classification | extraction
    name: str | None = None  # source name in reports (default: file stem)
    split: str = "train"  # split for hub / saved datasets
    subset: str | None = None  # hub dataset config name
    revision: str | None = None  # hub dataset revision
    streaming: bool = False  # stream instead of materialising (hub / large files)
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> column, e.g. {prompt: question}
    prompt_template: str | None = None  # classification / extraction: "Review: {sentence}\nSentiment:"
    completion_template: str | None = None  # extraction: " {answer}" (default: " {label}")
    label_map: dict[str, str] = field(default_factory=dict)  # classification: raw label -> text, {"1": positive}
    system: str | None = None  # system prompt added to every conversation
    weight: float | None = None  # mixture weight (share) of this source
    count: int | None = None  # mixture: absolute number of records from this source
    limit: int | None = None  # use only the first N records


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = ()  # training sources
    template: str | None = None  # None: tokenizer's own; chatml | llama-3 | mistral | plain | file.jinja
    mask: str = "auto"  # auto | assistant | last_assistant | completion | all
    max_seq_len: int = 1024  # tokens per sequence after rendering
    # longer than max_seq_len: truncate_right | truncate_left | drop | split (into max_seq_len pieces, each trained)
    truncation: Literal["truncate_right", "truncate_left", "drop", "split"] = "truncate_right"
    on_error: Literal["raise", "skip"] = "raise"  # bad record: stop with an error, or skip and count
    skipped_file: str | None = None  # where skipped records go (default: OUTPUT/skipped.jsonl)
    num_proc: int = 1  # tokenisation processes
    cache_dir: str | None = ".cache/sftlab"  # tokenised-data cache; None disables
    shuffle: bool = True  # shuffle training order each epoch (seeded)
    packing: bool = False  # pack sequences into rows of max_seq_len (padding-free)
    group_by_length: bool = True  # unpacked: batch similar lengths together to cut padding


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = ""  # local folder or hub id
    revision: str | None = None  # hub revision
    tokenizer: str | None = None  # tokenizer folder / id (default: name_or_path)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"  # weights dtype when loading
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = "sdpa"
    trust_remote_code: bool = False  # run code shipped with a hub model (off unless you trust it)
    from_scratch: dict[str, Any] | None = None  # random init: Llama config kwargs (hidden_size, ...)
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False  # train low-rank adapters (peft) instead of all weights
    r: int = 16  # adapter rank
    alpha: float = 32.0  # scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"  # all-linear | regex | list of module names
    use_rslora: bool = False  # rank-stabilised scaling
    use_dora: bool = False  # weight-decomposed LoRA
    modules_to_save: tuple[str, ...] = ()  # also train these fully, e.g. [embed_tokens, lm_head]
    merge_on_save: bool = False  # also write OUTPUT/merged/ (adapter merged into the base)
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base through bitsandbytes (CUDA GPU only)


@dataclass(frozen=True)
class SelectConfig:
    preset: Literal["none", "ffn_middle_band", "attention_only", "ffn_only", "half", "last_n_layers"] = "none"
    include: tuple[str, ...] = ()  # regexes on parameter names to train (searched, not anchored)
    exclude: tuple[str, ...] = ()  # regexes on parameter names to keep frozen (wins over include)
    layers: str | None = None  # only these blocks: "8-15" (0-based, inclusive) or fractions "0.25-0.5"
    last_n: int = 2  # last_n_layers: how many final blocks
    seed: int = 0  # half: which half of each block's matrices is trained


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0  # passes over the data (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; 0: derived from epochs
    micro_batch_size: int = 8  # sequences per forward pass
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-5  # peak learning rate
    min_lr_ratio: float = 0.0  # cosine / linear end lr as a share of lr
    weight_decay: float = 0.0  # AdamW decay (not applied to biases, norms, embeddings)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warm-up steps (wins over warmup_ratio when > 0)
    warmup_ratio: float = 0.0  # warm-up as a share of all steps
    max_grad_norm: float = 1.0  # clip gradient norm; 0 disables
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast precision
    seed: int = 42
    log_every_steps: int = 10  # metrics.jsonl + progress line every N steps
    eval_every_steps: int = 0  # eval loss on the held-out split every N steps; 0: only at the end
    progress: bool = True  # rich progress bar
    save_every_steps: int = 0  # checkpoint every N steps; 0: off
    save_every_minutes: float = 0.0  # checkpoint every N minutes; 0: off
    keep_last: int = 2  # checkpoints kept (older ones deleted)
    resume: str = "none"  # none | auto (latest valid checkpoint in output.dir) | path of a checkpoint
    max_skipped_steps: int = 10  # stop after this many updates skipped for non-finite loss / gradients
    segment_attention: bool = False  # packed + sdpa: causal attention per segment instead of a block mask
    causal_no_pad_mask: bool = True  # padded + causal: skip the padding mask (right padding cannot leak)
    compile: bool = False  # torch.compile each decoder layer (dynamic shapes); pays a compile at start


@dataclass(frozen=True)
class TaskConfig:
    name: str = ""  # shown in tables and scorecard.json
    kind: Literal["classification", "generation", "perplexity", "lm_eval"] = "classification"
    role: Literal["specialty", "versatility"] = "specialty"  # which side of the scorecard it counts for
    path: str = ""  # data file (jsonl / json / csv / tsv / parquet / txt for perplexity)
    prompt_template: str | None = None  # "Review: {sentence}\nSentiment:" (fields of the record in braces)
    label_column: str = "label"  # classification: the gold label column
    label_map: dict[str, str] = field(default_factory=dict)  # raw label -> continuation, {"1": " positive"}
    answer_column: str = "answers"  # generation: gold answers (str, list, or SQuAD {"text": [...]})
    max_new_tokens: int = 32  # generation: greedy decoding budget
    stop: tuple[str, ...] = ("\n",)  # generation: stop sequences
    metric: Literal["squad", "rouge_l", "exact"] = "squad"  # generation metric family
    limit: int | None = None  # score only the first N items
    max_tokens: int = 100_000  # perplexity: tokens of text scored
    seq_len: int = 256  # perplexity: window length
    kl_to_base: bool = True  # perplexity: also KL(base || model) on the same text when a base is given
    harness_tasks: tuple[str, ...] = ()  # lm_eval: lm-evaluation-harness task names, e.g. [hellaswag, arc_easy]
    num_fewshot: int | None = None  # lm_eval: few-shot examples (harness default when unset)


@dataclass(frozen=True)
class EvalConfig:
    split_ratio: float = 0.0  # share of the training records held out for eval loss
    file: str | None = None  # separate eval file (same format options as the first source)
    max_records: int = 2000  # cap on held-out eval records
    micro_batch_size: int = 16
    tasks: tuple[TaskConfig, ...] = ()  # specialty / versatility tasks for the scorecard
    every_steps: int = 0  # run the tasks during training every N steps; 0: only at the end
    batch_size: int = 32  # task evaluation batch size
    bootstrap_samples: int = 2000  # paired bootstrap resamples for confidence intervals
    compare_base: bool = True  # score the base model too and report paired differences


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/run"  # run directory
    overwrite: bool = True  # reuse an existing run directory
    save_final: bool = True  # write OUTPUT/final/ in Hugging Face format


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists -> tuples, dicts -> dataclasses)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {type(value).__name__} {value!r}")
        return build_dataclass(tp, value, where)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = get_args(tp)
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def build_dataclass(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors with the closest valid key."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint} (valid keys here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain-YAML-able dict of a config (tuples -> lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = [] if parts[i + 1].isdigit() else {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append({})
        node[idx] = value
    else:
        node[last] = value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``1e-4``, ``true``, ``[1, 2]``), and text that
    is not valid YAML is taken as a plain string."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. "Review: {x}"): take the text as it is
        _set_path(data, key.strip(), value)
    return data


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (give the path of a YAML file, e.g. examples/sst2.yaml)")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping with sections model, data, train, eval, output")
    data = apply_overrides(data, overrides)
    return build_dataclass(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


SECTIONS = (
    ("model", ModelConfig),
    ("lora", LoraConfig),
    ("select", SelectConfig),
    ("data", DataConfig),
    ("data.sources[]", SourceConfig),
    ("train", TrainConfig),
    ("eval", EvalConfig),
    ("eval.tasks[]", TaskConfig),
    ("output", OutputConfig),
)


def reference_markdown() -> str:
    """The config reference as Markdown tables, built from the field comments in this file."""
    import inspect
    import re

    out = []
    for name, cls in SECTIONS:
        out += [f"**`{name}`**", "", "| key | default | meaning |", "|---|---|---|"]
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        hints = get_type_hints(cls)
        for line in inspect.getsource(cls).splitlines()[2:]:
            code, _, doc = line.partition("  # ")
            m = re.match(r"\s+(\w+):", code)
            if not m or m.group(1) not in defaults:
                continue
            f = defaults[m.group(1)]
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            else:
                default = repr(f.default_factory())  # type: ignore[misc]
            if not doc and get_origin(hints[f.name]) is Literal:
                doc = " \\| ".join(get_args(hints[f.name]))
            out.append(f"| `{f.name}` | `{default}` | {doc.strip().replace('|', chr(92) + '|')} |")
        out.append("")
    return "\n".join(out)
