"""The training data of a run in one call: ``build(cfg, tokenizer) -> TrainingData``.

sources -> encoded records (pipeline.build_dataset; cleaned first with ``data.clean``) -> eval held out
(``eval.file``, else ``eval.split_ratio`` of the records; at most ``eval.max_records``) -> mixed
(``data.mixture``; a staged run mixes each stage's own sources instead) -> length histograms of the records
trained on -> the reports that go into ``data_report.json`` (which the run writes once).

Records are held out before mixing, so an up-sampled record is never on both sides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.config import Config, ConfigError
from sftlab.console import say


@dataclass
class TrainingData:
    """What a run trains and evaluates on, and what ``data_report.json`` says about it."""

    train: Any  # datasets.Dataset: the mixed records (a staged run: every kept record once, unmixed)
    eval: Any | None  # datasets.Dataset of held-out records, or None
    report: Any  # DataReport of the training sources (its ``mixture`` set when mixed)
    reports: dict = field(default_factory=dict)  # data_report.json: train (+ histograms), eval, stages
    stages: list | None = None  # the planned stages, each mixed (``dataset``, ``mixture_report``), or None


def build(cfg: Config, tokenizer, *, out: Path | None = None, stages: list | None = None, progress: bool = True):
    """The run's ``TrainingData``. ``out``: the run directory (removed records go to ``out/skipped.jsonl``
    unless ``data.skipped_file`` says where); ``stages``: the planned stages of a staged run
    (``train/stages.plan_stages``), mixed here from the training records."""
    from sftlab.data.pipeline import build_dataset

    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: add at least one source, e.g. data.sources: [{path: train.jsonl}]")
    skipped = cfg.data.skipped_file or (str(out / "skipped.jsonl") if out is not None else None)
    data_cfg = cfg.data
    if data_cfg.clean is not None:  # selection by IFD scores with the base being fine-tuned unless told otherwise
        from sftlab.data.clean.output import with_default_model

        data_cfg = dataclasses.replace(data_cfg, clean=with_default_model(data_cfg.clean, cfg))
    train, report = build_dataset(data_cfg, tokenizer, skipped_path=skipped, progress=progress, mix=False)
    train, eval_ds, eval_report = hold_out(cfg, tokenizer, train, progress)
    reports: dict[str, Any] = {"train": None}
    if eval_report is not None:
        reports["eval"] = eval_report.to_dict()
    if stages is None:
        train = _mix_run(cfg, train, report, progress)
    else:
        reports["stages"] = _mix_stages(cfg, stages, train)
    reports["train"] = report.to_dict()
    histograms = length_histograms_of(train)
    if histograms is not None:
        reports["train"]["histograms"] = histograms
    return TrainingData(train, eval_ds, report, reports, stages)


def hold_out(cfg: Config, tokenizer, train, progress: bool):
    """(train, eval or None, eval report or None): ``eval.file`` encoded as a source like the first one (never
    cleaned), else a seeded ``eval.split_ratio`` of ``train``; capped at ``eval.max_records``."""
    from sftlab.data.pipeline import build_dataset

    eval_ds = eval_report = None
    if cfg.eval.file:
        src = dataclasses.replace(cfg.data.sources[0], path=cfg.eval.file, name="eval", limit=None, weight=None,
                                  count=None, fraction=None)  # fmt: skip
        eval_data = dataclasses.replace(cfg.data, clean=None)  # the eval file is never cleaned or selected
        eval_ds, eval_report = build_dataset(eval_data, tokenizer, sources=(src,), skipped_path=None, progress=progress)
    elif cfg.eval.split_ratio > 0:
        split = train.train_test_split(test_size=cfg.eval.split_ratio, seed=cfg.train.seed)
        train, eval_ds = split["train"], split["test"]
    if eval_ds is not None and len(eval_ds) > cfg.eval.max_records:
        eval_ds = eval_ds.select(range(cfg.eval.max_records))
    return train, eval_ds, eval_report


def _mix_run(cfg: Config, train, report, progress: bool):
    from sftlab.data.mixing import format_mixture
    from sftlab.data.pipeline import mix_sources

    train, report.mixture = mix_sources(train, cfg.data.sources, cfg.data.mixture)
    if progress and len(cfg.data.sources) > 1:
        say(format_mixture(report.mixture))
    return train


def _mix_stages(cfg: Config, stages: list, train) -> dict[str, dict]:
    """Mix every stage's dataset from the (unmixed) training records; returns name -> mixture report."""
    from sftlab.data.mixing import format_mixture, mix_dataset

    reports = {}
    for st in stages:
        st.dataset, st.mixture_report = mix_dataset(train, st.specs, st.mixture)
        if len(st.dataset) == 0:
            raise ConfigError(f"stages: stage {st.name!r} has no records to train on (see its sources and weights)")
        reports[st.name] = st.mixture_report
    if cfg.train.progress:
        for st in stages:
            say(f"stage {st.index + 1} {st.name}: {format_mixture(st.mixture_report)}")
    return reports


def length_histograms_of(train) -> dict | None:
    """Tokens- and trained-tokens-per-record histograms (per source) of the records trained on; None when
    there are none."""
    from sftlab.data.report import length_histograms

    if train is None or len(train) == 0 or "num_trained" not in train.column_names:
        return None
    data = train.select_columns([c for c in ("length", "num_trained", "source") if c in train.column_names]).to_dict()
    return length_histograms(data["length"], data["num_trained"], data.get("source") or ["all"] * len(data["length"]))
