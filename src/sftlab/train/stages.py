"""A run in ordered stages: each stage has its own data mixture, and may set its own lr schedule and trainable
parameters. DMT (Dong et al. 2023, dual-stage mixed fine-tuning) is a preset that expands to two stages.

Each stage calls the training loop once, on the model the stage before left behind, with a fresh optimizer and
lr schedule. Stages draw their records from ``data.sources`` by name (after the eval split, so held-out records
stay held out) and mix them as data/mixing.py says.

Run directory::

    stages/<k>_<name>/metrics.jsonl   the loop's lines of stage k
    stages/<k>_<name>/checkpoints/    its checkpoints (train.save_every_steps / save_every_minutes)
    stages/<k>_<name>/done.json       written when the stage has finished
    stages/<k>_<name>/model.safetensors   the weights after stage k (kept when checkpointing is on)
    metrics.jsonl                     every finished stage's lines, ``step`` counted over the whole run, plus
                                      ``stage`` (its name) and ``stage_step``

Resume (``train.resume: auto``): finished stages are skipped, the weights after the last of them are loaded
from its ``model.safetensors``, and the current stage resumes from its latest checkpoint. Without checkpointing
there is nothing to resume from, and a resume after a finished stage stops with an error saying so.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sftlab.config import Config, ConfigError, DmtConfig, MixtureConfig, SelectConfig, StageConfig, StageSourceConfig
from sftlab.console import say
from sftlab.data.mixing import MixSpec


@dataclass
class Stage:
    """One planned stage: its loop config, mixture, trainable selection and (once mixed) its dataset."""

    index: int  # 0-based
    name: str
    cfg: Config  # what the loop runs with (train.* of the stage)
    specs: list[MixSpec]
    mixture: MixtureConfig
    select: SelectConfig
    dataset: object = None
    mixture_report: dict | None = None

    @property
    def dirname(self) -> str:
        return f"{self.index + 1}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.name)}"


def is_staged(cfg: Config) -> bool:
    return bool(cfg.stages) or bool(cfg.dmt.specialist)


def expand_dmt(dmt: DmtConfig, names: list[str]) -> tuple[StageConfig, ...]:
    """DMT: stage 1 trains on the specialist sources; stage 2 on every other (general) source plus ``k`` of the
    specialist records (Dong et al. 2023, "How Abilities in Large Language Models are Affected by Supervised
    Fine-tuning Data Composition": k = 1/256 kept specialist skills and general ability best).

    >>> [[(s if isinstance(s, str) else (s.name, s.fraction)) for s in st.sources]
    ...  for st in expand_dmt(DmtConfig(specialist=("sst2",), k=0.25), ["sst2", "wiki"])]
    [['sst2'], ['wiki', ('sst2', 0.25)]]
    """
    unknown = [s for s in dmt.specialist if s not in names]
    if unknown:
        raise ConfigError(f"dmt.specialist: no data source named {', '.join(unknown)} (sources: {', '.join(names)})")
    general = [n for n in names if n not in dmt.specialist]
    if not general:
        raise ConfigError("dmt: stage 2 needs general data: add a data source not named in dmt.specialist")
    if not dmt.k >= 0:
        raise ConfigError(f"dmt.k must be >= 0, got {dmt.k}")
    return (
        StageConfig(name="dmt1_specialist", sources=tuple(dmt.specialist)),
        StageConfig(
            name="dmt2_general",
            sources=(*general, *(StageSourceConfig(name=s, fraction=dmt.k) for s in dmt.specialist if dmt.k > 0)),
        ),
    )


def stage_specs(stage: StageConfig, cfg: Config, names: list[str]) -> list[MixSpec]:
    """The mixture of a stage: named sources as the stage says; no sources: ``data.sources`` as configured."""
    if not stage.sources:
        return [MixSpec(n, s.weight, s.count, s.fraction) for s, n in zip(cfg.data.sources, names)]
    specs, seen = [], set()
    for entry in stage.sources:
        src = StageSourceConfig(name=entry) if isinstance(entry, str) else entry
        if src.name not in names:
            raise ConfigError(
                f"stages: stage {stage.name!r} names source {src.name!r}, which is not in data.sources "
                f"(names: {', '.join(names)}; a source's name is its name:, else its file stem)"
            )
        if src.name in seen:
            raise ConfigError(f"stages: stage {stage.name!r} names source {src.name!r} twice")
        seen.add(src.name)
        specs.append(MixSpec(src.name, src.weight, src.count, src.fraction))
    return specs


def stage_train_config(cfg: Config, stage: StageConfig, out_dir: Path) -> Config:
    """The run config with the stage's schedule: unset stage fields keep the ``train`` values. Setting epochs
    or max_steps on a stage sets both (the other back to its default); likewise warmup_steps / warmup_ratio."""
    t = cfg.train
    epochs, max_steps = t.epochs, t.max_steps
    if stage.epochs is not None or stage.max_steps is not None:
        epochs = stage.epochs if stage.epochs is not None else 1.0
        max_steps = stage.max_steps or 0
    warmup_steps, warmup_ratio = t.warmup_steps, t.warmup_ratio
    if stage.warmup_steps is not None or stage.warmup_ratio is not None:
        warmup_steps, warmup_ratio = stage.warmup_steps or 0, stage.warmup_ratio or 0.0

    def pick(value, default):
        return default if value is None else value

    train = replace(
        t,
        epochs=epochs,
        max_steps=max_steps,
        lr=pick(stage.lr, t.lr),
        scheduler=pick(stage.scheduler, t.scheduler),
        warmup_steps=warmup_steps,
        warmup_ratio=warmup_ratio,
        min_lr_ratio=pick(stage.min_lr_ratio, t.min_lr_ratio),
        resume="none" if t.resume == "none" else "auto",
    )
    return replace(cfg, train=train, stages=(), dmt=DmtConfig(), output=replace(cfg.output, dir=str(out_dir)))


def plan_stages(cfg: Config, names: list[str], out: Path) -> list[Stage]:
    """Validated stages of a run (``names``: the unique names of ``data.sources``), not yet mixed."""
    if cfg.stages and cfg.dmt.specialist:
        raise ConfigError("set either stages or dmt (a preset that makes two stages), not both")
    if cfg.train.resume not in ("none", "auto"):
        raise ConfigError(
            f"train.resume: {cfg.train.resume!r}: a staged run resumes with train.resume=auto (it finds the stage "
            "and its latest checkpoint itself)"
        )
    configs = cfg.stages or expand_dmt(cfg.dmt, names)
    stages, used = [], set()
    for i, sc in enumerate(configs):
        name = sc.name or f"stage{i + 1}"
        if name in used:
            raise ConfigError(f"stages: two stages are named {name!r}; give each a unique name")
        used.add(name)
        if sc.select is not None and cfg.lora.enabled:
            raise ConfigError(f"stages: stage {name!r} sets select, but lora.enabled trains adapters in every stage")
        stage = Stage(
            i,
            name,
            cfg,
            stage_specs(replace(sc, name=name), cfg, names),
            sc.mixture or cfg.data.mixture,
            sc.select if sc.select is not None else cfg.select,
        )
        stage.cfg = stage_train_config(cfg, sc, out / "stages" / stage.dirname)
        stages.append(stage)
    return stages


def set_trainable(model, select: SelectConfig, lora: bool) -> None:
    """Trainable parameters of a stage: the selection, or every parameter (LoRA: the adapters, unchanged)."""
    from sftlab.model.select import apply_selection, is_active

    if lora:
        return
    if is_active(select):
        apply_selection(model, select)
    else:
        for p in model.parameters():
            p.requires_grad_(True)


def merge_stage_metrics(out: Path, finished: list[tuple[Stage, int]]) -> None:
    """Rewrite ``OUTPUT/metrics.jsonl`` from the finished stages' files; ``finished``: (stage, step offset)."""
    lines = []
    for st, offset in finished:
        path = out / "stages" / st.dirname / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                lines.append(
                    json.dumps({**rec, "step": rec["step"] + offset, "stage": st.name, "stage_step": rec["step"]})
                )
    _write_atomic(out / "metrics.jsonl", "".join(x + "\n" for x in lines))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def combine_results(results: list, out: Path):
    """One ``RunResult`` for the whole run from the stages' results."""
    from sftlab.train.loop import RunResult

    steps = sum(r.steps for r in results)
    return RunResult(
        output_dir=str(out),
        steps=steps,
        losses=[x for r in results for x in r.losses],
        grad_norms=[x for r in results for x in r.grad_norms],
        eval_loss=results[-1].eval_loss,
        skipped_steps=sum(r.skipped_steps for r in results),
        resumed_from=next((r.resumed_from for r in results if r.resumed_from), None),
        startup_s=sum(r.startup_s for r in results),
        packing_fill=sum(r.packing_fill * r.steps for r in results) / max(steps, 1),
        split_sequences=sum(r.split_sequences for r in results),
        pieces_without_targets=sum(r.pieces_without_targets for r in results),
        tokens=sum(r.tokens for r in results),
        resumed_tokens=sum(r.resumed_tokens for r in results),
        trained_tokens=sum(r.trained_tokens for r in results),
        elapsed_s=sum(r.elapsed_s for r in results),
    )


def run_stages(
    cfg: Config, model, tokenizer, stages: list[Stage], eval_ds, out: Path, accelerator, on_stage_end=None
) -> tuple[object, list[dict]]:
    """Train stage after stage on one model; returns (combined RunResult, per-stage summaries).

    ``on_stage_end(stage, model)`` is called after each stage trained (tests look at the weights there).
    """
    from safetensors.torch import load_model, save_model

    from sftlab.model.load import count_parameters
    from sftlab.train.checkpoint import find_latest_valid
    from sftlab.train.loop import RunResult, train

    root = out / "stages"  # a fresh run found it gone or cleared it (outdir.start_run)
    keep_weights = bool(cfg.train.save_every_steps or cfg.train.save_every_minutes)
    results, summaries, finished, pending, offset = [], [], [], None, 0
    for st in stages:
        sdir = root / st.dirname
        done = sdir / "done.json"
        if cfg.train.resume != "none" and done.is_file():
            info = json.loads(done.read_text(encoding="utf-8"))
            results.append(RunResult(**info["result"]))
            summaries.append(info["summary"])
            pending = (st, sdir / "model.safetensors")
        else:
            if pending is not None:
                _load_stage_weights(model, *pending, load_model)
                pending = None
            if not find_latest_valid(sdir / "checkpoints"):
                (sdir / "metrics.jsonl").unlink(missing_ok=True)  # lines of an attempt that left no checkpoint
            set_trainable(model, st.select, cfg.lora.enabled)
            trainable, _ = count_parameters(model)
            if st.cfg.train.progress:
                say(
                    f"stage {st.index + 1}/{len(stages)} {st.name}: {len(st.dataset):,} records, "
                    f"{trainable:,} trainable parameters"
                )
            sdir.mkdir(parents=True, exist_ok=True)
            result = train(st.cfg, model, tokenizer, st.dataset, eval_ds, sdir, accelerator=accelerator)
            summary = {
                "name": st.name,
                "first_step": offset + 1,
                "steps": result.steps,
                "records": len(st.dataset),
                "trainable_parameters": trainable,
                "lr": st.cfg.train.lr,
                "train_loss": result.final_loss,
                "eval_loss": result.eval_loss,
                "tokens": result.tokens,
                "trained_tokens": result.trained_tokens,
                "train_time_s": round(result.elapsed_s, 2),
            }
            if accelerator.is_main_process:
                if keep_weights:
                    tmp = sdir / "model.safetensors.tmp"
                    save_model(accelerator.unwrap_model(model), str(tmp))
                    os.replace(tmp, sdir / "model.safetensors")
                _write_atomic(done, json.dumps({"result": asdict(result), "summary": summary}, indent=2))
            results.append(result)
            summaries.append(summary)
            if on_stage_end is not None:
                on_stage_end(st, model)
        finished.append((st, offset))
        offset += results[-1].steps
        if accelerator.is_main_process:
            merge_stage_metrics(out, finished)
    if pending is not None:  # every stage had finished before: the model is the last stage's
        _load_stage_weights(model, *pending, load_model)
    return combine_results(results, out), summaries


def _load_stage_weights(model, stage: Stage, path: Path, load_model) -> None:
    if not path.is_file():
        raise ConfigError(
            f"cannot resume after stage {stage.name!r}: it finished, but its weights were not kept ({path} is "
            "missing; they are kept when train.save_every_steps or train.save_every_minutes is set). Start the "
            "run again with train.resume=none"
        )
    missing, unexpected = load_model(model, str(path), strict=True)
    if missing or unexpected:
        raise ConfigError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
