"""Experiment: fine-tune the tiny base on 10% of an instruction pool chosen by IFD vs 10% chosen at random,
and compare the loss on the same held-out responses.

    python benchmarks/ifd_selection.py [--share 0.1] [--seeds 0,1,2] [--epochs 3] [--threads 1] [--reuse]

1. Pool: the four Alpaca-style sets of ../shared/data/instruction, cleaned with ``sftlab data clean``
   (exact + near duplicates across the sets, default filters), shuffled (seed 0); the first
   ``--eval-records`` are held out as the eval set, the rest is the pool.
2. Selection with ``sftlab data clean`` on the pool (dedup and filters off): ``select.by=ifd`` with the tiny
   base (IFD > 1 dropped, highest first) and ``select.by=random`` (one selection per seed), ``share`` of the
   pool each; ``random_tokens``: random records as many as hold, in expectation, the response words of the
   IFD selection (IFD prefers long responses: this arm separates "which records" from "how much text").
3. Fine-tuning of the tiny base (``sftlab demo``'s, .cache/sftlab/tiny-base/run/final) on each selection:
   ChatML, loss on the assistant turns, max_seq_len 512, AdamW lr 5e-4 cosine, 3 % warm-up, micro-batch 8,
   ``--epochs`` epochs, bf16 autocast; the IFD selection is trained once per seed (training seed), each
   random selection with its own seed. Eval loss: token-mean cross-entropy of the held-out responses
   (and their end-of-turn token), the same records for every run, and for the base before fine-tuning.

Prints one row per run and the mean per arm; writes everything under ``--out`` (results.json).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = (
    "alpaca_cherry_5_percent",
    "code_alpaca_2k",
    "alpaca_gpt4_en_demo_llamafactory",
    "llms_from_scratch_instruction-data",
)
BASE = ".cache/sftlab/tiny-base/run/final"


def clean(args: list[str]) -> dict:
    from sftlab.cli import main

    out = args[args.index("--out") + 1]
    if main(["data", "clean", *args, "--no-progress"]) != 0:
        raise SystemExit(f"sftlab data clean {' '.join(args)} failed")
    return json.loads((Path(out) / "report.json").read_text())


def train_overrides(args, data: Path, eval_file: Path, out: Path, seed: int) -> list[str]:
    return [
        f"model.name_or_path={args.base}",
        f"data.sources=[{{path: {data}, format: messages}}]",
        "data.mask=assistant",
        "data.max_seq_len=512",
        "data.on_error=skip",
        f"train.epochs={args.epochs}",
        "train.micro_batch_size=8",
        "train.lr=5e-4",
        "train.warmup_ratio=0.03",
        "train.precision=bf16",
        f"train.seed={seed}",
        "train.progress=false",
        "train.log_every_steps=1000",
        f"eval.file={eval_file}",
        f"eval.max_records={args.eval_records}",
        f"output.dir={out}",
        "output.overwrite=true",
        "output.save_final=false",
    ]


def response_words(path: Path) -> list[int]:
    """Words of the last turn of each record of a kept.jsonl."""
    return [len(json.loads(line)["messages"][-1]["content"].split()) for line in path.read_text().splitlines()]


def base_eval_loss(args, eval_file: Path, out: Path) -> float:
    from sftlab.config import load_config
    from sftlab.data.pipeline import build_dataset
    from sftlab.model.load import load_model, load_tokenizer
    from sftlab.train.loop import build_accelerator, evaluate_loss

    cfg = load_config(None, train_overrides(args, eval_file, eval_file, out, 0))
    tok = load_tokenizer(cfg.model)
    ds, _ = build_dataset(cfg.data, tok, progress=False)
    model = load_model(cfg.model, tok)
    return evaluate_loss(model, ds, cfg, tok.pad_token_id, build_accelerator(cfg.train.precision))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--eval-records", type=int, default=500)
    p.add_argument("--base", default=BASE)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--arms", default="ifd,random,random_tokens", help="of ifd, random, random_tokens")
    p.add_argument("--reuse", action="store_true", help="keep the selections and runs already under --out")
    p.add_argument("--out", default="runs/ifd_selection")
    args = p.parse_args()
    arms = args.arms.split(",")
    import torch

    from sftlab.config import load_config
    from sftlab.train.run import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    # 1. pool and held-out eval set
    clean([*(str(SHARED / "instruction" / f"{s}.jsonl") for s in SETS), "--out", str(out / "pool_clean")])
    kept = (out / "pool_clean" / "kept.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(kept)
    eval_file, pool_file = out / "eval.jsonl", out / "pool.jsonl"
    eval_file.write_text("\n".join(kept[: args.eval_records]) + "\n", encoding="utf-8")
    pool_file.write_text("\n".join(kept[args.eval_records :]) + "\n", encoding="utf-8")
    print(
        f"pool {len(kept) - args.eval_records:,} records, eval {args.eval_records:,} ({time.perf_counter() - t0:.0f} s)"
    )
    # 2. selections
    off = ["--set", "data.clean.dedup.exact=none", "--set", "data.clean.dedup.near=none",
           "--set", "data.clean.filter.enabled=false"]  # fmt: skip
    selections, reports = {}, {}

    def select(name: str, *sets: str) -> None:
        selections[name] = out / f"select_{name}"
        done = selections[name] / "report.json"
        if args.reuse and done.is_file():
            reports[name] = json.loads(done.read_text())
        else:
            reports[name] = clean([str(pool_file), "--out", str(selections[name]), *off,
                                   *[x for kv in sets for x in ("--set", kv)]])  # fmt: skip

    select("ifd", "data.clean.select.by=ifd", f"data.clean.select.share={args.share}",
           f"data.clean.select.model={args.base}")  # fmt: skip
    print(f"IFD selection: {reports['ifd']['selection']} ({time.perf_counter() - t0:.0f} s)")
    # random_tokens: as many records as hold (in expectation) the response words of the IFD selection
    pool_words = statistics.mean(response_words(pool_file))
    ifd_words = sum(response_words(selections["ifd"] / "kept.jsonl"))
    token_budget = round(ifd_words / pool_words)
    for s in seeds:
        if "random" in arms:
            select(f"random{s}", "data.clean.select.by=random", f"data.clean.select.share={args.share}",
                   f"data.clean.select.seed={s}")  # fmt: skip
        if "random_tokens" in arms:
            select(f"random_tokens{s}", "data.clean.select.by=random", f"data.clean.select.budget={token_budget}",
                   f"data.clean.select.seed={s}")  # fmt: skip
    # 3. fine-tuning
    results = {"base_eval_loss": base_eval_loss(args, eval_file, out / "base"), "runs": []}
    print(f"base: eval loss {results['base_eval_loss']:.4f} (ppl {math.exp(results['base_eval_loss']):.1f})")
    runs = [(arm, "ifd" if arm == "ifd" else f"{arm}{s}", s) for arm in arms for s in seeds]
    for arm, sel, seed in runs:
        run_dir = out / "runs" / f"{sel}_seed{seed}"
        t1 = time.perf_counter()
        if args.reuse and (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            cfg = load_config(None, train_overrides(args, selections[sel] / "kept.jsonl", eval_file, run_dir, seed))
            summary = run_training(cfg, progress=False)
        report = json.loads((run_dir / "data_report.json").read_text())["train"]
        row = {
            "arm": arm,
            "selection": sel,
            "seed": seed,
            "records_selected": reports[sel]["records_kept"],
            "response_words": sum(response_words(selections[sel] / "kept.jsonl")),
            "records_trained": report["records_kept"],
            "trained_tokens": report["trained_tokens"],
            "steps": summary["steps"],
            "train_loss": summary["train_loss"],
            "eval_loss": summary["eval_loss"],
            "seconds": round(time.perf_counter() - t1, 1),
        }
        results["runs"].append(row)
        print(
            f"{sel:>15} seed {seed}: {row['records_trained']:,} records trained ({row['trained_tokens']:,} trained "
            f"tokens), {row['steps']} steps, train loss {row['train_loss']:.4f}, eval loss {row['eval_loss']:.4f} "
            f"(ppl {math.exp(row['eval_loss']):.1f}), {row['seconds']:.0f} s"
        )
    for arm in arms:
        losses = [r["eval_loss"] for r in results["runs"] if r["arm"] == arm]
        sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
        results[f"{arm}_eval_loss_mean"], results[f"{arm}_eval_loss_sd"] = statistics.mean(losses), sd
        print(f"{arm}: eval loss {statistics.mean(losses):.4f} ± {sd:.4f} (sd over {len(losses)} runs)")
    results["selection_reports"] = {k: v["selection"] for k, v in reports.items()}
    results["args"] = vars(args)
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"done in {results['elapsed_s']:.0f} s -> {out / 'results.json'}")


if __name__ == "__main__":
    main()
