"""The specialty / versatility trade-off on SmolLM2-135M-Instruct, end to end, in one command (repository root):

    python examples/tradeoff/run.py            # the README's table and plot (runs/tradeoff/, ~60 min on 2 cores)
    python examples/tradeoff/run.py --quick    # a look in ~10 minutes: small subsets, the main levers only

For each task (SST-2 sentiment as a one-word chat answer; SQuAD extractive QA as a chat answer) it trains and
scores every lever against the untouched model: full fine-tuning, LoRA r8 / r16, two selective presets,
replay of general instruction data at two shares, DMT two-stage, interpolation of the full fine-tune with the
base, and (SQuAD) IFD vs random vs length-matched random selection at the same budget. Then it writes
``runs/tradeoff/tradeoff.{md,json,png}``: specialty gain vs versatility loss per point with 95% CIs, and each
point's share of full fine-tuning's gain and loss (``sftlab.eval.balance``).

Resumable: a point whose run finished with the same config is reused, so a killed experiment continues where
it stopped (``--fresh`` trains everything again). The base is scored once per task (``eval.base_cache``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MODEL = ".cache/sftlab/models/SmolLM2-135M-Instruct"

# Subset sizes: training records per task, the selection pool, replay counts, eval items.
SIZES = {
    "default": {"sst2": 800, "squad": 200, "eval": []},
    "quick": {
        "sst2": 240,
        "squad": 96,
        "eval": ["eval.tasks.0.limit=100", "eval.tasks.1.limit=40", "eval.tasks.2.max_tokens=2048",
                 "eval.tasks.3.limit=30", "eval.tasks.4.limit=16", "eval.tasks.4.max_new_tokens=64",
                 "eval.bootstrap_samples=500"],
    },
}  # fmt: skip
QUICK_RUNS = ("full_ft", "lora_r16", "ffn_middle_band", "replay_25%")


def replay_count(n: int, share: float) -> int:
    """Replay records that make ``share`` of a mixture with ``n`` task records."""
    return round(n * share / (1 - share))


def sweep_runs(task: str, n: int, selection: bool) -> list[dict]:
    """The points of one task's sweep, ``n`` task records each (the selection points pick ``n`` of ``2n``)."""
    runs = [
        {"name": "full_ft", "group": "full fine-tune", "set": ["train.lr=5.0e-5"]},
        {"name": "lora_r8", "group": "LoRA", "set": ["lora.enabled=true", "lora.r=8", "lora.alpha=16",
                                                      "lora.dropout=0.0", "train.lr=5.0e-4"]},
        {"name": "lora_r16", "group": "LoRA", "set": ["lora.enabled=true", "lora.r=16", "lora.alpha=32",
                                                       "lora.dropout=0.0", "train.lr=3.0e-4"]},
        {"name": "ffn_middle_band", "group": "selective", "set": ["select.preset=ffn_middle_band", "train.lr=1.0e-4"]},
        {"name": "half", "group": "selective", "set": ["select.preset=half", "train.lr=5.0e-5"]},
        {"name": "replay_10%", "group": "replay", "set": [f"data.sources.1.count={replay_count(n, 0.10)}"]},
        {"name": "replay_25%", "group": "replay", "set": [f"data.sources.1.count={replay_count(n, 0.25)}"]},
        {"name": "dmt", "group": "DMT", "set": [f"dmt.specialist=[{task}]", "data.sources.1.count=null",
                                                  f"data.sources.1.limit={replay_count(n, 0.25)}"]},
    ]  # fmt: skip
    if selection:  # n of 2n records; the replay source is cut to one (unused) record so it is not scored
        # Selection only: no dedup (questions on one passage are near duplicates of each other) and no filters
        pool = [f"data.sources.0.limit={2 * n}", "data.sources.1.limit=1", f"data.clean.select.budget={n}",
                "data.clean.dedup.exact=none", "data.clean.dedup.near=none", "data.clean.filter.enabled=false"]
        runs += [
            {"name": "select_ifd", "group": "data selection", "set": [*pool, "data.clean.select.by=ifd"]},
            {"name": "select_random", "group": "data selection", "set": [*pool, "data.clean.select.by=random"]},
            {"name": "select_length_matched", "group": "data selection",
             "set": [*pool, "data.clean.select.by=length_matched"]},
        ]  # fmt: skip
    return runs


def write_sweep(task: str, size: str, out: Path) -> Path:
    quick = size == "quick"
    n = SIZES[size][task]
    runs = [r for r in sweep_runs(task, n, selection=task == "squad" and not quick) if not quick or r["name"] in QUICK_RUNS]
    sweep = {
        "config": f"examples/tradeoff/{task}.yaml",
        "out": str(out / task),
        "title": f"{'SST-2' if task == 'sst2' else 'SQuAD'} on SmolLM2-135M-Instruct: specialty vs versatility",
        "reference": "full_ft",
        "set": [f"data.sources.0.limit={n}", f"eval.base_cache={out / 'base_scores'}", *SIZES[size]["eval"]],
        "runs": runs,
        "interpolate": [{"run": "full_ft", "alphas": [0.5] if quick else [0.25, 0.5, 0.75]}],
    }
    path = out / task / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by examples/tradeoff/run.py\n" + yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def ensure_model() -> None:
    if (ROOT / MODEL / "config.json").is_file():
        return
    from sftlab.model.fetch import fetch_model

    print("fetching SmolLM2-135M-Instruct (once) ...")
    fetch_model("smollm2-135m-instruct", cache=ROOT / ".cache" / "sftlab" / "models")


def main(argv: list[str] | None = None) -> int:
    from sftlab.sweep import run_sweep

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subsets and the main levers only (~10 minutes)")
    ap.add_argument("--task", choices=["sst2", "squad", "both"], default="both")
    ap.add_argument("--fresh", action="store_true", help="train every point again (default: reuse finished points)")
    ap.add_argument("--out", default=None, help="experiment folder (default runs/tradeoff, --quick runs/tradeoff-quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the configs name data by paths relative to the repository root
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = "quick" if args.quick else "default"
    out = Path(args.out or ("runs/tradeoff-quick" if args.quick else "runs/tradeoff"))
    t0 = time.perf_counter()
    ensure_model()
    summaries = {}
    for task in ("sst2", "squad") if args.task == "both" else (args.task,):
        print(f"=== {task}: sweep {write_sweep(task, size, out)}")
        summaries[task] = run_sweep(out / task / "sweep.yaml", reuse=not args.fresh)
    from sftlab.eval.balance import write_balance

    files = write_balance({t: out / t for t in summaries}, out, title="SmolLM2-135M-Instruct: specialty gain vs "
                          "versatility loss")  # fmt: skip
    print((out / "tradeoff.md").read_text(encoding="utf-8"))
    took = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps({"size": size, "seconds": round(took, 1),
                                                 "sweeps": {t: s["seconds"] for t, s in summaries.items()}}, indent=2))
    print(f"trade-off experiment finished in {took / 60:.1f} min -> {', '.join(map(str, files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
