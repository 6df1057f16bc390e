"""``sftlab sweep SWEEP.yaml``: a small set of runs that differ in one or two settings, plus weight
interpolations, all scored with the same tasks and drawn on one specialty / versatility plane.

A sweep file::

    config: examples/sst2.yaml        # every run starts from this run config (its eval.tasks score all runs)
    out: runs/sweep                   # one folder per run, plus tradeoff.{md,json,png}
    set: [train.epochs=1]             # overrides for every run
    reference: full_ft                # the others are also compared with this one (paired CIs)
    runs:
      - {name: full_ft}
      - {name: lora, set: [lora.enabled=true, train.lr=2e-3]}
    grid:                             # one more run per combination, named after its values
      train.lr: [1e-4, 3e-4]
    interpolate:
      - {run: full_ft, alphas: [0.25, 0.5, 0.75]}

Keys are checked like run configs (a typo is an error naming the closest key). The base model is scored once
per task for the whole sweep (``eval.base_cache``, default ``OUT/base_scores``).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sftlab.config import Config, ConfigError, build_dataclass, load_config, read_yaml_mapping
from sftlab.console import say


@dataclass(frozen=True)
class SweepRun:
    name: str = ""  # folder name under out/ and label in the table
    group: str | None = None  # colour / legend in the plot (default: the name)
    set: tuple[str, ...] = ()  # overrides on top of the sweep's config, e.g. [train.lr=1e-4]


@dataclass(frozen=True)
class SweepInterpolation:
    run: str = ""  # the run whose final model is interpolated with its base
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75)  # 0 = base, 1 = the run's model


@dataclass(frozen=True)
class SweepConfig:
    config: str = ""  # run config every run starts from
    out: str = "runs/sweep"  # sweep folder
    set: tuple[str, ...] = ()  # overrides for every run
    runs: tuple[SweepRun, ...] = ()  # named runs
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # key -> values: a run per combination
    interpolate: tuple[SweepInterpolation, ...] = ()  # weight interpolations of finished runs
    reference: str | None = None  # point the others are compared with (paired differences)
    title: str = ""  # plot / table title


def load_sweep(path: str | Path) -> SweepConfig:
    data = read_yaml_mapping(path, missing="sweep file not found: {path}", sections="config, out, runs, grid, interpolate")
    sweep = build_dataclass(SweepConfig, data, "sweep")
    if not sweep.config:
        raise ConfigError(f"{Path(path)}: set config: to the run config every run starts from")
    return sweep


def _value_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def expand_runs(sweep: SweepConfig) -> list[SweepRun]:
    """The named runs, then one run per grid combination (named ``key=value,...`` with the last key part).

    >>> [r.name for r in expand_runs(SweepConfig(config="c", grid={"train.lr": (1e-4, 3e-4), "lora.r": (8,)}))]
    ['lr=0.0001,r=8', 'lr=0.0003,r=8']
    """
    runs = list(sweep.runs)
    if sweep.grid:
        keys = list(sweep.grid)
        for combo in itertools.product(*(sweep.grid[k] for k in keys)):
            name = ",".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in zip(keys, combo))
            runs.append(
                SweepRun(name=name, group="grid", set=tuple(f"{k}={_value_text(v)}" for k, v in zip(keys, combo)))
            )
    names = [r.name for r in runs]
    bad = [n for n in names if not n]
    if bad:
        raise ConfigError("sweep: every run needs a name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"sweep: run names must be unique ({', '.join(dup)} twice)")
    if not runs:
        raise ConfigError("sweep: no runs (add runs: or grid:)")
    return runs


def folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", name)


def run_config(sweep: SweepConfig, run: SweepRun, extra: list[str]) -> Config:
    out = Path(sweep.out) / folder_name(run.name)
    # A sweep run that is not reused is trained again: it replaces what its folder held (output.overwrite).
    # The base is scored once per task for the whole sweep (eval.base_cache; a sweep or run may set another).
    cache = f"eval.base_cache={Path(sweep.out) / 'base_scores'}"
    cfg = load_config(sweep.config, [cache, *sweep.set, *run.set, *extra, f"output.dir={out}",
                                     "eval.keep_items=true", "output.overwrite=true"])
    if not cfg.eval.tasks:
        raise ConfigError(f"sweep: {sweep.config} has no eval.tasks; a sweep scores every run with them")
    return cfg


def _reusable(cfg: Config) -> bool:
    out = Path(cfg.output.dir)
    if not (out / "scorecard.json").is_file() or not (out / "config.yaml").is_file():
        return False
    return load_config(out / "config.yaml") == cfg


def run_sweep(
    path: str | Path,
    extra: list[str] | None = None,
    reuse: bool = False,
    progress: bool = True,
    out: str | None = None,
) -> dict:
    """Train and score every run, interpolate, then write ``OUT/tradeoff.{md,json,png}``; returns the summary.

    ``extra``: overrides for every run (after the sweep's own); ``out``: another sweep folder."""
    from sftlab.eval.interpolate import run_interpolation
    from sftlab.eval.tradeoff import base_point, write_tradeoff
    from sftlab.train.run import run_training

    t0 = time.perf_counter()
    sweep = load_sweep(path)
    if out is not None:
        sweep = replace(sweep, out=out)
    extra = list(extra or [])
    runs = expand_runs(sweep)
    configs = {r.name: run_config(sweep, r, extra) for r in runs}  # every config checked before any training
    for item in sweep.interpolate:
        if item.run not in configs:
            raise ConfigError(f"sweep: interpolate names run {item.run!r}, which is not one of {', '.join(configs)}")
    names = [r.name for r in runs]
    if sweep.reference and sweep.reference not in names:
        raise ConfigError(f"sweep: reference {sweep.reference!r} is not one of the runs ({', '.join(names)})")
    points, timings = [], {}
    for i, r in enumerate(runs):
        cfg = configs[r.name]
        start = time.perf_counter()
        if reuse and _reusable(cfg):
            say(f"[sweep] {i + 1}/{len(runs)} {r.name}: reusing {cfg.output.dir}")
        else:
            say(f"[sweep] {i + 1}/{len(runs)} {r.name}: training -> {cfg.output.dir}")
            run_training(cfg, progress=progress)
        timings[r.name] = round(time.perf_counter() - start, 1)
        card = json.loads((Path(cfg.output.dir) / "scorecard.json").read_text(encoding="utf-8"))
        if i == 0 and card.get("has_base"):
            points.append({**base_point(card), "scorecard": str(Path(cfg.output.dir) / "scorecard.json")})
        points.append({"name": r.name, "group": r.group or r.name, "card": card, "seconds": timings[r.name],
                       "run_dir": cfg.output.dir,
                       "scorecard": str(Path(cfg.output.dir) / "scorecard.json")})  # fmt: skip
    for item in sweep.interpolate:
        cfg = configs[item.run]
        start = time.perf_counter()
        say(f"[sweep] interpolating {item.run} with its base at alpha {', '.join(map(str, item.alphas))}")
        points += run_interpolation(
            cfg.model.name_or_path, Path(cfg.output.dir) / "final", list(item.alphas), cfg.eval,
            Path(sweep.out) / f"{folder_name(item.run)}_interpolation", label=item.run, progress=progress,
            reuse=reuse,
        )  # fmt: skip
        timings[f"{item.run} interpolation"] = round(time.perf_counter() - start, 1)
    summary = write_tradeoff(points, sweep.out, title=sweep.title, reference=sweep.reference)
    summary["seconds"] = timings
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(sweep.out) / "tradeoff.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    say((Path(sweep.out) / "tradeoff.md").read_text(encoding="utf-8"))
    say(f"sweep: {len(runs)} runs, {len(points)} points in {summary['total_seconds']:.0f} s -> "
        f"{', '.join(summary['files'])}")  # fmt: skip
    return summary
