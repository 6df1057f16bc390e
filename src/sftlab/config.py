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


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors / aliases (no alias bombs: the work is bounded by the text's
    size) and duplicate keys (YAML would silently keep the last)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML anchors and aliases (& and *) are not accepted in configs (line "
                                 f"{mark.line + 1}): write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)  # inline merge keys (<<: {...})
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}): each key once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def parse_yaml(text: str):
    """YAML text through ``StrictLoader`` (no tags beyond plain data, no aliases, no duplicate keys)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


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
    weight: float | None = None  # mixture: relative share of the mixture's records (see data.mixture; 0 = unused)
    count: int | None = None  # mixture: exact number of records from this source (repeated when more than it has)
    fraction: float | None = None  # mixture: share of this source's own records (0.5 = half, 2 = each twice)
    limit: int | None = None  # use only the first N records


@dataclass(frozen=True)
class MixtureConfig:
    temperature: float | None = None  # shares proportional to records^(1/T): 1 = as concatenated, larger = flatter
    total: int | None = None  # records of a weight / temperature mixture (default: the most with none repeated)
    seed: int = 0  # which records are drawn (down-sampling) and which repeated (up-sampling)


@dataclass(frozen=True)
class DedupConfig:
    exact: Literal["none", "conversation", "prompt"] = "conversation"  # equal up to case, spaces, punctuation
    near: Literal["none", "conversation", "prompt"] = "conversation"  # similar (MinHash + LSH, Jaccard)
    shingle_words: int = 5  # near: word n-gram shingles
    bands: int = 20  # near: LSH bands (a pair is a candidate when one band of its MinHash values matches)
    rows: int = 5  # near: MinHash values per band (bands x rows hash functions)
    threshold: float = 0.7  # near: Jaccard similarity of the shingle sets at or above which records are duplicates
    seed: int = 0  # near: MinHash hash functions


@dataclass(frozen=True)
class FilterConfig:
    enabled: bool = True  # heuristic filters on the response (the last assistant turn)
    min_response_words: int = 1  # fewer words: short_response
    max_response_words: int | None = None  # more words: long_response
    prompt_echo_share: float | None = 0.5  # the response holds the whole prompt, >= this share of its words
    max_duplicate_line_share: float = 0.5  # share of characters in repeated lines (>= 10 chars, with a letter)
    max_top_ngram_share: tuple[float, float, float] = (0.6, 0.6, 0.6)  # top 2/3/4-gram share (>= 20 words)
    max_nonprintable_share: float = 0.0  # share of control / unassigned characters and U+FFFD
    languages: tuple[str, ...] = ()  # keep only these ISO 639-1 codes, e.g. [en] (needs py3langid); empty: off


@dataclass(frozen=True)
class EvalSetConfig:
    path: str = ""  # eval data file or folder (jsonl / json / csv / tsv / parquet)
    name: str | None = None  # name in reports (default: file stem)
    fields: tuple[str, ...] = ()  # fields holding the item's text (default: every string field)
    split: str = "train"  # split of a saved dataset


@dataclass(frozen=True)
class DecontaminateConfig:
    eval_sets: tuple[EvalSetConfig, ...] = ()  # evaluation data the training records must not contain
    ngram: int = 8  # coverage n-gram (words)
    coverage: float = 0.5  # contaminated: the record holds more than this share of an eval item's n-grams
    long_ngram: int = 13  # contaminated: the record shares one n-gram of this length with an eval item; 0: off


@dataclass(frozen=True)
class DataSelectConfig:
    by: Literal["none", "ifd", "length", "random", "length_matched"] = "none"  # ifd (base model) | length (longest) | random | length_matched (random records with the response lengths of the ifd selection: its control)
    budget: int | None = None  # records kept per source
    share: float | None = None  # share of each source's records kept (after the other operators)
    model: str | None = None  # base model for ifd / diversity (default: model.name_or_path)
    max_ifd: float = 1.0  # ifd: drop records above (the prompt does not help predict the response)
    diversity: float | None = None  # skip records whose cosine to an already selected one is above this
    max_seq_len: int = 512  # tokens scored per record
    batch_size: int = 16  # records per forward pass
    seed: int = 0  # random selection


@dataclass(frozen=True)
class CleanConfig:
    dedup: DedupConfig = field(default_factory=DedupConfig)  # exact and near duplicates
    filter: FilterConfig = field(default_factory=FilterConfig)  # heuristic filters
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)  # against eval sets
    select: DataSelectConfig = field(default_factory=DataSelectConfig)  # selection under a budget


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = ()  # training sources
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # how sources with weight / count mix
    clean: CleanConfig | None = None  # data cleaning before rendering, per source, before mixing (see data.clean)
    template: str | None = None  # None: tokenizer's own; chatml | llama-3 | mistral | plain | file.jinja
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # template variables for every render, e.g. {enable_thinking: false}; also the defaults of the template saved in final/ (generate, chat, eval render the same)
    mask: str = "auto"  # auto | assistant | last_assistant | completion | all
    reasoning: Literal["template", "keep", "drop"] = "template"  # reasoning traces (reasoning_content / thinking / <think>...</think>): as the template renders them (usually the last turn's only; a final reply's trace the template has no place for is written inline) | keep (every turn's; records where the template drops one are refused) | drop
    reasoning_mask: Literal["all", "last", "none"] = "all"  # rendered traces trained: of every trained turn | of the last assistant turn only | none (context only)
    tool_format: Literal["native", "json_in_content"] = "native"  # tool calls, results, tools list: the template's own format (a template that drops them is refused) | json_in_content (JSON text in the turns: a named fallback, not the model's format)
    max_seq_len: int = 1024  # tokens per sequence after rendering
    # longer than max_seq_len: truncate_right | truncate_left | drop | split (into max_seq_len pieces, each trained)
    truncation: Literal["truncate_right", "truncate_left", "drop", "split"] = "truncate_right"
    on_error: Literal["raise", "skip"] = "raise"  # bad record: stop with an error, or skip and count
    warn_removed_share: float = 0.1  # a console warning (per reason, with the fix) when more than this share of records is removed
    skipped_file: str | None = None  # where skipped records go (default: OUTPUT/skipped.jsonl)
    num_proc: int = 1  # tokenisation processes
    cache_dir: str | None = ".cache/sftlab"  # tokenised-data cache; None disables
    shuffle: bool = True  # shuffle training order each epoch (seeded)
    packing: bool = False  # pack sequences into rows of max_seq_len (padding-free)
    group_by_length: bool = True  # unpacked: batch similar lengths together to cut padding


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = ""  # local folder, hub id, or a .gguf file (dequantised on load; see sftlab model fetch)
    gguf_file: str | None = None  # a GGUF file inside the name_or_path folder (instead of naming the file itself)
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


Tracker = Literal["tensorboard", "trackio", "wandb", "mlflow"]


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
    report_to: tuple[Tracker, ...] = ()  # also log metrics to tensorboard | trackio | wandb | mlflow (a pip extra each)
    run_name: str | None = None  # run name in trackers (default: the output folder's name)
    project: str = "sftlab"  # tracker project (W&B, trackio) / experiment (MLflow)
    distributed: Literal["auto", "ddp", "fsdp2", "deepspeed"] = "auto"  # several processes: auto (DDP, or what an accelerate config sets) | ddp | fsdp2 (parameters, gradients and optimizer state sharded per decoder layer) | deepspeed (ZeRO, pip extra)
    fsdp_cpu_offload: bool = False  # fsdp2: keep sharded parameters and optimizer state in CPU memory (GPU runs)
    deepspeed_stage: Literal[1, 2, 3] = 2  # deepspeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters sharded)
    deepspeed_offload: bool = False  # deepspeed: ZeRO-Offload, optimizer state (stage 3: parameters too) in CPU memory
    deepspeed_config: str | None = None  # deepspeed: a DeepSpeed JSON config (zero_optimization etc.) used instead of the two above
    num_processes: int = 1  # sftlab train starts this many processes on this machine (torch.distributed.run); same as --nproc


@dataclass(frozen=True)
class TaskConfig:
    name: str = ""  # shown in tables and scorecard.json
    kind: Literal["classification", "generation", "perplexity", "reply_loss", "lm_eval"] = "classification"
    role: Literal["specialty", "versatility"] = "specialty"  # which side of the scorecard it counts for
    path: str = ""  # data file (jsonl / json / csv / tsv / parquet / txt for perplexity)
    prompt_template: str | None = None  # "Review: {sentence}\nSentiment:" (fields of the record in braces)
    chat: bool = False  # the prompt as a user turn through the model's chat template (generation prompt included); labels / replies end with its end-of-turn
    system: str | None = None  # chat: a system turn before the prompt (default: whatever the template adds)
    label_column: str = "label"  # classification: the gold label column
    label_map: dict[str, str] = field(default_factory=dict)  # raw label -> continuation, {"1": " positive"}
    answer_column: str = "answers"  # generation: gold answers (str, list, or SQuAD {"text": [...]}); reply_loss: the reference reply
    max_new_tokens: int = 32  # generation: greedy decoding budget
    stop: tuple[str, ...] = ("\n",)  # generation: stop sequences
    metric: Literal["squad", "rouge_l", "exact", "reply_check"] = "squad"  # generation metric family (reply_check: the reply ends its turn, no loop, and holds a third of the reference's content words)
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
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast of task scoring, model and base alike (bf16: several times faster on CPUs with bf16 matmuls and on GPUs)
    bootstrap_samples: int = 2000  # paired bootstrap resamples for confidence intervals
    compare_base: bool = True  # score the base model too and report paired differences
    keep_items: bool = False  # scorecard.json also holds per-item values (for paired comparisons between runs)
    base_cache: str | None = None  # folder of the base's task scores, reused while task, data, base weights, template, batch size and precision are unchanged (sweeps score their base once)
    samples: int = 3  # held-out records generated before and after training (samples.jsonl, report); 0: off
    sample_max_new_tokens: int = 64  # generation budget of each sample


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/run"  # run directory
    overwrite: bool = False  # a fresh run may replace a previous run in dir (checkpoints, final/, metrics), removed once data and model have loaded
    save_final: bool = True  # write OUTPUT/final/ in Hugging Face format
    report: bool = True  # write OUTPUT/report.html at the end of the run (sftlab report rebuilds it)


@dataclass(frozen=True)
class StageSourceConfig:
    name: str = ""  # a data.sources[] name (its name:, else its file stem)
    weight: float | None = None  # relative share of this stage's mixture
    count: int | None = None  # exact number of records of this source in this stage
    fraction: float | None = None  # share of the source's records in this stage (0.5 = half, 2 = each twice)


@dataclass(frozen=True)
class StageConfig:
    name: str = ""  # shown in logs, metrics.jsonl (stage) and summary.json (default: stage1, stage2, ...)
    sources: tuple[StageSourceConfig | str, ...] = ()  # data.sources names: bare (all records once) or {name, weight / count / fraction}; empty: data.sources as set
    mixture: MixtureConfig | None = None  # temperature / total / seed of this stage (default: data.mixture)
    epochs: float | None = None  # passes over this stage's mixture (default: train.epochs)
    max_steps: int | None = None  # optimizer steps of this stage (default: train.max_steps)
    lr: float | None = None  # peak learning rate (default: train.lr)
    scheduler: Literal["cosine", "linear", "constant"] | None = None  # default: train.scheduler
    warmup_steps: int | None = None  # default: train.warmup_steps
    warmup_ratio: float | None = None  # default: train.warmup_ratio
    min_lr_ratio: float | None = None  # default: train.min_lr_ratio
    select: SelectConfig | None = None  # trainable parameters of this stage (default: the run's select)


@dataclass(frozen=True)
class DmtConfig:
    specialist: tuple[str, ...] = ()  # data.sources names of the specialist data; set to train in two DMT stages
    k: float = 1 / 256  # stage 2 share of the specialist records mixed into the general data (1/256: Dong et al.)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stages: tuple[StageConfig, ...] = ()  # ordered training stages, each with its own data mix and schedule
    dmt: DmtConfig = field(default_factory=DmtConfig)  # dual-stage mixed fine-tuning preset (expands to stages)


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
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # a mapping meant for a section: its own error says what is wrong
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


MAX_LIST_INDEX = 1000  # --set a.N.b: entries of a list a config may name (bounded work from any override)


def _list_index(part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) > MAX_LIST_INDEX:
        raise ConfigError(f"override {dotted!r}: list index {part!r} must be a number from 0 to {MAX_LIST_INDEX}")
    return int(part)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = _list_index(part, dotted)
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
        idx = _list_index(last, dotted)
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
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. "Review: {x}"): take the text as it is
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        _set_path(data, key.strip(), value)
    return data


def read_yaml_mapping(path: str | Path, missing: str, sections: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (``parse_yaml``: safe, no aliases, no duplicate keys; empty
    file -> ``{}``).

    ``missing``: the error when the file does not exist (``{path}`` is filled in); ``sections``: the keys
    named when the top level is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(missing.format(path=p))
    try:
        data = parse_yaml(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with sections {sections}")
    return data


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(
            path,
            missing="config file not found: {path} (give the path of a YAML file, e.g. examples/sst2.yaml)",
            sections="model, data, train, eval, output",
        )
    data = apply_overrides(data, overrides)
    cfg = build_dataclass(Config, data)
    check_values(cfg)
    return cfg


# (key, test, what the value must be): checked at load, listed in the config reference.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.max_seq_len": (lambda v: v >= 2, ">= 2"),
    "data.num_proc": (lambda v: v >= 1, ">= 1"),
    "data.warn_removed_share": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.sources[].limit": (lambda v: v is None or v >= 1, ">= 1"),
    "data.sources[].weight": (lambda v: v is None or v >= 0, ">= 0"),
    "data.sources[].count": (lambda v: v is None or v >= 0, ">= 0"),
    "data.sources[].fraction": (lambda v: v is None or v >= 0, ">= 0"),
    "lora.r": (lambda v: v >= 1, ">= 1"),
    "lora.alpha": (lambda v: v > 0, "> 0"),
    "lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.epochs": (lambda v: v >= 0, ">= 0 (0 only with max_steps)"),
    "train.max_steps": (lambda v: v >= 0, ">= 0 (0: from epochs)"),
    "train.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_accum": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: 0 <= v <= 1, "in [0, 1] (AdamW learning rates are ~1e-6 to 1e-2; 0 is a control run)"),
    "train.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.adam_eps": (lambda v: v > 0, "> 0"),
    "train.adam_betas": (lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.max_grad_norm": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "train.log_every_steps": (lambda v: v >= 1, ">= 1"),
    "train.eval_every_steps": (lambda v: v >= 0, ">= 0"),
    "train.save_every_steps": (lambda v: v >= 0, ">= 0"),
    "train.save_every_minutes": (lambda v: v >= 0, ">= 0"),
    "train.keep_last": (lambda v: v >= 0, ">= 0 (0: keep all)"),
    "train.max_skipped_steps": (lambda v: v >= 0, ">= 0"),
    "train.num_processes": (lambda v: v >= 1, ">= 1"),
    "eval.split_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval.max_records": (lambda v: v >= 1, ">= 1"),
    "eval.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.bootstrap_samples": (lambda v: v >= 0, ">= 0"),
    "eval.every_steps": (lambda v: v >= 0, ">= 0"),
    "eval.samples": (lambda v: v >= 0, ">= 0"),
    "eval.sample_max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "eval.tasks[].limit": (lambda v: v is None or v >= 1, ">= 1"),
    "eval.tasks[].max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "eval.tasks[].max_tokens": (lambda v: v >= 2, ">= 2"),
    "eval.tasks[].seq_len": (lambda v: v >= 2, ">= 2"),
    "eval.tasks[].num_fewshot": (lambda v: v is None or v >= 0, ">= 0"),
    "data.mixture.temperature": (lambda v: v is None or v > 0, "> 0"),
    "data.mixture.total": (lambda v: v is None or v >= 1, ">= 1"),
    "data.clean.dedup.shingle_words": (lambda v: v >= 1, ">= 1"),
    "data.clean.dedup.bands": (lambda v: v >= 1, ">= 1"),
    "data.clean.dedup.rows": (lambda v: v >= 1, ">= 1"),
    "data.clean.dedup.threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.clean.filter.min_response_words": (lambda v: v >= 0, ">= 0"),
    "data.clean.filter.max_response_words": (lambda v: v is None or v >= 1, ">= 1"),
    "data.clean.filter.prompt_echo_share": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "data.clean.filter.max_duplicate_line_share": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.clean.filter.max_top_ngram_share": (lambda v: all(0 <= x <= 1 for x in v), "three values in [0, 1]"),
    "data.clean.filter.max_nonprintable_share": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.clean.decontaminate.ngram": (lambda v: v >= 1, ">= 1"),
    "data.clean.decontaminate.coverage": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.clean.decontaminate.long_ngram": (lambda v: v >= 0, ">= 0 (0: off)"),
    "data.clean.select.budget": (lambda v: v is None or v >= 1, ">= 1"),
    "data.clean.select.share": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "data.clean.select.max_ifd": (lambda v: v > 0, "> 0"),
    "data.clean.select.diversity": (lambda v: v is None or -1 <= v <= 1, "in [-1, 1]"),
    "data.clean.select.max_seq_len": (lambda v: v >= 2, ">= 2"),
    "data.clean.select.batch_size": (lambda v: v >= 1, ">= 1"),
    "select.last_n": (lambda v: v >= 1, ">= 1"),
    "stages[].epochs": (lambda v: v is None or v > 0, "> 0"),
    "stages[].max_steps": (lambda v: v is None or v >= 0, ">= 0"),
    "stages[].lr": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "stages[].warmup_steps": (lambda v: v is None or v >= 0, ">= 0"),
    "stages[].warmup_ratio": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "stages[].min_lr_ratio": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "stages[].sources[].weight": (lambda v: v is None or v >= 0, ">= 0"),
    "stages[].sources[].count": (lambda v: v is None or v >= 0, ">= 0"),
    "stages[].sources[].fraction": (lambda v: v is None or v >= 0, ">= 0"),
    "dmt.k": (lambda v: 0 < v <= 1, "in (0, 1]"),
}


def _values_at(cfg: Any, path: str):
    """(concrete key, value) pairs for a RANGES key; ``[]`` walks every entry of a list."""
    if not dataclasses.is_dataclass(cfg):  # a bare-name stage source, an unset optional section
        return
    head, _, rest = path.partition(".")
    name = head.removesuffix("[]")
    value = getattr(cfg, name)
    if head.endswith("[]"):
        for i, item in enumerate(value):
            for key, v in _values_at(item, rest):
                yield f"{name}.{i}.{key}", v
    elif rest:
        for key, v in _values_at(value, rest):
            yield f"{name}.{key}", v
    else:
        yield name, value


def check_values(cfg: Config) -> None:
    """Ranges of numeric keys (``RANGES``) and combinations that cannot work, as ``ConfigError``s naming the key."""
    for path, (ok, what) in RANGES.items():
        for key, value in _values_at(cfg, path):
            if not ok(value):
                raise ConfigError(f"{key}: {value!r} is out of range; it must be {what}")
    t = cfg.train
    if t.epochs == 0 and t.max_steps == 0:
        raise ConfigError("train.epochs is 0 and train.max_steps is 0: nothing to train; set one of them")
    if t.segment_attention and not cfg.data.packing:
        raise ConfigError("train.segment_attention needs data.packing: true (it is attention per packed segment); "
                          "set data.packing: true or train.segment_attention: false")
    if t.segment_attention and cfg.model.attn_implementation not in ("sdpa", "flash_attention_2"):
        raise ConfigError(f"train.segment_attention runs on sdpa or flash_attention_2, not "
                          f"model.attn_implementation {cfg.model.attn_implementation!r}; change one of the two")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


SECTIONS = (
    ("model", ModelConfig),
    ("lora", LoraConfig),
    ("select", SelectConfig),
    ("data", DataConfig),
    ("data.sources[]", SourceConfig),
    ("data.mixture", MixtureConfig),
    ("data.clean", CleanConfig),
    ("data.clean.dedup", DedupConfig),
    ("data.clean.filter", FilterConfig),
    ("data.clean.decontaminate", DecontaminateConfig),
    ("data.clean.decontaminate.eval_sets[]", EvalSetConfig),
    ("data.clean.select", DataSelectConfig),
    ("train", TrainConfig),
    ("eval", EvalConfig),
    ("eval.tasks[]", TaskConfig),
    ("output", OutputConfig),
    ("stages[]", StageConfig),
    ("stages[].sources[]", StageSourceConfig),
    ("dmt", DmtConfig),
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
            if dataclasses.is_dataclass(hints[f.name]):
                default = "section"
            allowed = RANGES.get(f"{name}.{f.name}")
            if allowed:
                doc = f"{doc} ({allowed[1]})" if doc else allowed[1]
            if not doc and get_origin(hints[f.name]) is Literal:
                doc = " \\| ".join(get_args(hints[f.name]))
            out.append(f"| `{f.name}` | `{default}` | {doc.strip().replace('|', chr(92) + '|')} |")
        out.append("")
    return "\n".join(out)
