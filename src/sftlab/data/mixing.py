"""Mixtures of sources: how many records of each source a run trains on, and which ones.

Three ways to say how much of each source (``data.sources[]`` fields, or a stage's ``sources``):

- **weights**: ``weight`` on every source = relative share of the mixture's records (normalised; 0 leaves the
  source out). The mixture has ``data.mixture.total`` records, by default the most it can have with no record
  repeated: ``min(records_i / share_i)``.
- **counts**: ``count`` = exact number of records, ``fraction`` = share of the source's own records (0.5 = half,
  2 = every record twice); a source with neither gives all its records once.
- **temperature** (``data.mixture.temperature`` T, no weight / count on the sources): shares proportional to
  ``records_i ** (1 / T)`` (T = 1: as concatenated; larger T: flatter, small sources gain), total as for weights.

Records are drawn, never invented: a source asked for ``k <= n`` of its ``n`` records gives a seeded choice of
``k`` distinct records; asked for more, it gives every record ``k // n`` times plus a seeded choice of the rest
(up-sampling by repetition). The choice depends only on (``data.mixture.seed``, source name, n, k), so a mixture
is the same on every run, and changing one source's share does not change the records drawn from the others.
Kept order: source after source, each in file order (the training loop shuffles).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass

from sftlab.config import ConfigError, MixtureConfig


@dataclass(frozen=True)
class MixSpec:
    """How much of one source: at most one of weight / count / fraction (none: all records, or temperature)."""

    name: str
    weight: float | None = None
    count: int | None = None
    fraction: float | None = None


def specs_from_sources(sources, names: list[str]) -> list[MixSpec]:
    """``MixSpec`` of each ``SourceConfig`` (``names``: their unique names, as in the dataset's source column)."""
    return [MixSpec(n, s.weight, s.count, s.fraction) for s, n in zip(sources, names)]


def mixture_mode(specs: list[MixSpec], mixture: MixtureConfig) -> str:
    """``weights`` | ``counts`` | ``temperature`` | ``none`` (every record once); errors for mixed modes."""
    where = "data.sources[]"
    for s in specs:
        set_fields = [k for k in ("weight", "count", "fraction") if getattr(s, k) is not None]
        if len(set_fields) > 1:
            raise ConfigError(
                f"{where} {s.name!r}: set one of weight / count / fraction, not {' and '.join(set_fields)}"
            )
        if s.weight is not None and (s.weight < 0 or not math.isfinite(s.weight)):
            raise ConfigError(f"{where} {s.name!r}: weight must be a finite number >= 0, got {s.weight}")
        if s.count is not None and s.count < 0:
            raise ConfigError(f"{where} {s.name!r}: count must be >= 0, got {s.count}")
        if s.fraction is not None and (s.fraction < 0 or not math.isfinite(s.fraction)):
            raise ConfigError(f"{where} {s.name!r}: fraction must be a finite number >= 0, got {s.fraction}")
    weighted = [s.name for s in specs if s.weight is not None]
    counted = [s.name for s in specs if s.count is not None or s.fraction is not None]
    if mixture.temperature is not None:
        if weighted or counted:
            raise ConfigError(
                f"data.mixture.temperature sets the shares itself: remove weight / count / fraction from "
                f"{', '.join(weighted + counted)}"
            )
        if not mixture.temperature > 0:
            raise ConfigError(f"data.mixture.temperature must be > 0, got {mixture.temperature}")
        return "temperature"
    if weighted and counted:
        raise ConfigError(
            f"{where}: {', '.join(weighted)} set weight but {', '.join(counted)} set count / fraction; use "
            "weights on every source (shares of the mixture) or count / fraction (absent = all records)"
        )
    if weighted:
        missing = [s.name for s in specs if s.weight is None]
        if missing:
            raise ConfigError(
                f"{where}: {', '.join(missing)} has no weight while other sources do; give every source a "
                "weight (0 leaves a source out)"
            )
        if not sum(s.weight for s in specs) > 0:
            raise ConfigError(f"{where}: the weights sum to 0; give at least one source a weight > 0")
        return "weights"
    return "counts" if counted else "none"


def split_by_shares(total: int, shares: list[float]) -> list[int]:
    """Integers summing to ``total``, proportional to ``shares`` (largest remainder; ties to the first).

    >>> split_by_shares(10, [0.5, 0.3, 0.2]), split_by_shares(7, [1, 1, 1])
    ([5, 3, 2], [3, 2, 2])
    """
    norm = sum(shares)
    exact = [total * s / norm for s in shares]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def target_counts(sizes: dict[str, int], specs: list[MixSpec], mixture: MixtureConfig) -> dict[str, int]:
    """Records wanted from each source (``sizes``: records available per source name).

    >>> specs = [MixSpec("a", weight=0.75), MixSpec("b", weight=0.25)]
    >>> target_counts({"a": 300, "b": 1000}, specs, MixtureConfig())
    {'a': 300, 'b': 100}
    >>> target_counts({"a": 300, "b": 1000}, [MixSpec("a", count=500), MixSpec("b", fraction=0.01)], MixtureConfig())
    {'a': 500, 'b': 10}
    """
    mode = mixture_mode(specs, mixture)
    if mode == "none":
        return {s.name: sizes[s.name] for s in specs}
    if mode == "counts":
        out = {}
        for s in specs:
            n = sizes[s.name]
            out[s.name] = s.count if s.count is not None else round(s.fraction * n) if s.fraction is not None else n
        return out
    if mode == "temperature":
        shares = [sizes[s.name] ** (1.0 / mixture.temperature) if sizes[s.name] else 0.0 for s in specs]
    else:
        shares = [s.weight for s in specs]
    norm = sum(shares)
    if not norm > 0:
        raise ConfigError("data.sources: every source of the mixture is empty")
    shares = [x / norm for x in shares]
    total = mixture.total
    if total is None:
        empty = [s.name for s, w in zip(specs, shares) if w > 0 and sizes[s.name] == 0]
        if empty:
            raise ConfigError(
                f"data.sources: {', '.join(empty)} has a share of the mixture but no records; give it weight 0 "
                "or set data.mixture.total (records are then repeated)"
            )
        total = min(math.floor(sizes[s.name] / w + 1e-9) for s, w in zip(specs, shares) if w > 0)
    elif total < 0:
        raise ConfigError(f"data.mixture.total must be >= 0, got {total}")
    return dict(zip([s.name for s in specs], split_by_shares(total, shares)))


def sample_indices(n: int, k: int, seed: int, name: str) -> list[int]:
    """``k`` indices into ``range(n)``: a seeded choice of distinct ones when ``k <= n``, else every index
    ``k // n`` times plus a seeded choice of ``k % n`` more. Sorted within each copy (file order).

    >>> sample_indices(5, 7, seed=0, name="a")[:5], len(sample_indices(5, 7, seed=0, name="a"))
    ([0, 1, 2, 3, 4], 7)
    """
    if k == 0:
        return []
    if n == 0:
        raise ConfigError(f"data.sources: {name!r} has no records but {k} are asked for")
    digest = hashlib.sha256(f"{seed}\0{name}\0{n}\0{k}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    copies, rest = divmod(k, n)
    picked = sorted(rng.sample(range(n), rest))
    return [i for _ in range(copies) for i in range(n)] + picked


def plan_mixture(
    source_of_row: list[str], specs: list[MixSpec], mixture: MixtureConfig
) -> tuple[list[int], dict[str, int], dict[str, int]]:
    """(dataset rows of the mixture, records available per source, records selected per source).

    ``source_of_row``: the source name of every row of the unmixed dataset. Sources in ``specs`` order.
    """
    rows_of: dict[str, list[int]] = {s.name: [] for s in specs}
    for i, name in enumerate(source_of_row):
        if name in rows_of:
            rows_of[name].append(i)
    sizes = {name: len(rows) for name, rows in rows_of.items()}
    wanted = target_counts(sizes, specs, mixture)
    picked = []
    for s in specs:
        rows = rows_of[s.name]
        picked += [rows[j] for j in sample_indices(len(rows), wanted[s.name], mixture.seed, s.name)]
    return picked, sizes, wanted


def mixture_report(
    specs: list[MixSpec],
    mixture: MixtureConfig,
    sizes: dict[str, int],
    lengths: list[int],
    trained: list[int],
    source_of_row: list[str],
) -> dict:
    """Shares of the mixture per source in records, tokens and trained (loss) tokens.

    ``lengths`` / ``trained`` / ``source_of_row``: per row of the *mixed* dataset.
    """
    per = {s.name: {"records": 0, "tokens": 0, "trained_tokens": 0} for s in specs}
    for name, n, t in zip(source_of_row, lengths, trained):
        p = per[name]
        p["records"] += 1
        p["tokens"] += n
        p["trained_tokens"] += t
    totals = {k: sum(p[k] for p in per.values()) for k in ("records", "tokens", "trained_tokens")}
    sources = {}
    for s in specs:
        p = per[s.name]
        avail = sizes[s.name]
        sources[s.name] = {
            "available": avail,
            "selected": p["records"],
            "repeats": round(p["records"] / avail, 4) if avail else 0.0,
            "asked": {k: getattr(s, k) for k in ("weight", "count", "fraction") if getattr(s, k) is not None},
            **{k: v for k, v in p.items() if k != "records"},
            **{f"{k}_share": round(p[k] / totals[k], 4) if totals[k] else 0.0 for k in totals},
        }
    return {
        "mode": mixture_mode(specs, mixture),
        "temperature": mixture.temperature,
        "seed": mixture.seed,
        "records": totals["records"],
        "tokens": totals["tokens"],
        "trained_tokens": totals["trained_tokens"],
        "sources": sources,
    }


def mix_dataset(dataset, specs: list[MixSpec], mixture: MixtureConfig):
    """(mixed dataset, report dict) of an encoded dataset with a ``source`` column (see the module doc).

    Rows of sources that ``specs`` does not name are left out (a stage draws only from its own sources).
    """
    names = [str(x) for x in dataset["source"]]
    if mixture_mode(specs, mixture) == "none" and set(names) <= {s.name for s in specs}:
        counts = Counter(names)
        picked, sizes = list(range(len(names))), {s.name: counts[s.name] for s in specs}
        mixed = dataset
    else:
        picked, sizes, _ = plan_mixture(names, specs, mixture)
        mixed = dataset.select(picked)
    cols = dataset.select_columns(["length", "num_trained"])[:]
    report = mixture_report(
        specs,
        mixture,
        sizes,
        [cols["length"][i] for i in picked],
        [cols["num_trained"][i] for i in picked],
        [names[i] for i in picked],
    )
    return mixed, report


def format_mixture(report: dict) -> str:
    """One line per source: records (repeats), and shares of records / tokens / trained tokens."""
    lines = [f"mixture ({report['mode']}): {report['records']:,} records, {report['tokens']:,} tokens"]
    for name, s in report["sources"].items():
        lines.append(
            f"  {name}: {s['selected']:,} of {s['available']:,} records (x{s['repeats']:g}); share of records "
            f"{100 * s['records_share']:.1f}%, tokens {100 * s['tokens_share']:.1f}%, trained tokens "
            f"{100 * s['trained_tokens_share']:.1f}%"
        )
    return "\n".join(lines)
