"""The specialty / versatility trade-off experiment, end to end, in one command (from the repository root):

    python examples/tradeoff/run.py            # the README's table and plot (runs/tradeoff/)
    python examples/tradeoff/run.py --quick    # a smoke test with a few steps per run (runs/tradeoff-quick/)

1. builds the demo's tiny pretrained base once (cached under .cache/sftlab/tiny-base);
2. cuts WikiText-2 valid (the base's pretraining text) into ~400-character records: the replay source;
3. runs the sweep examples/tradeoff/sweep.yaml: trains and scores every method, interpolates the full
   fine-tune with the base, and writes tradeoff.md / tradeoff.json / tradeoff.png in the sweep folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPLAY = Path(".cache/sftlab/tradeoff/wikitext-2-valid.jsonl")
QUICK = [
    "train.max_steps=6",
    "data.sources.0.limit=400",
    "eval.tasks.0.limit=64",
    "eval.tasks.1.max_tokens=4096",
    "eval.tasks.2.max_tokens=2048",
    "eval.bootstrap_samples=200",
    "train.log_every_steps=2",
]


def write_replay_records(root: Path, path: Path, max_chars: int = 400) -> int:
    from sftlab.demo import chunk_text

    lines = (root / "data" / "text" / "wikitext-2-valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    records = chunk_text(lines, max_chars=max_chars)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    from sftlab.demo import build_tiny_base
    from sftlab.sweep import run_sweep

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps per run and small evals (smoke test)")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs whose resolved config is unchanged")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a machine shared with other jobs, threads that wait on each other "
        "were much slower here: about 500 tokens/s with 2 threads against 8,700 with 1, not under equal load)",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value in every run")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the configs name data by paths relative to the repository root
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    build_tiny_base(ROOT, ROOT / ".cache" / "sftlab")
    n = write_replay_records(ROOT, REPLAY)
    print(f"replay source: {n:,} WikiText-2 valid records of <= 400 characters -> {REPLAY}")
    summary = run_sweep(
        "examples/tradeoff/sweep.yaml",
        extra=(QUICK if args.quick else []) + args.set,
        reuse=args.reuse,
        out="runs/tradeoff-quick" if args.quick else None,
    )
    print(f"trade-off experiment finished in {time.perf_counter() - t0:.0f} s (sweep {summary['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
