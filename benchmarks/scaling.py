"""Training tokens/s on 1 vs N processes (one per GPU): DDP, FSDP2 and DeepSpeed ZeRO through `sftlab train --nproc`.

Weak scaling: every process trains micro-batches of the same size, so N processes train N times the tokens
per optimizer step. Each run is `sftlab train CONFIG --nproc N --set train.distributed=D` in a fresh process
group; tokens/s is `summary.json`'s (real, non-padding tokens of all processes / training time, start-up
and model saving excluded). Reported per (N, distributed): the median over `--repeats`, tokens/s per process
and the scaling efficiency = tokens/s(N) / (N x tokens/s(1 process)).

Model: a Llama with the shape of Qwen2.5-0.5B (`--shape 0.5b`: hidden 896, 24 layers, 14 / 2 heads, ffn 4864,
tied embeddings; about 0.4B parameters with this tokenizer's vocabulary) or a small one (`--shape tiny`, for a
CPU check of the script), random init; data: the bundled WikiText-2 / Tiny Shakespeare text as packed language
modelling rows of `--seq-len` tokens; tokenizer: a BPE of `--vocab` tokens trained on the same text (seconds).

    python benchmarks/scaling.py --shape 0.5b --nproc 1,8 --distributed ddp,fsdp2,deepspeed --precision bf16
    python benchmarks/scaling.py --shape tiny --nproc 1,2 --distributed ddp --steps 10   # CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sftlab.demo import write_text_corpus

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True),
}  # fmt: skip


def run_config(work: Path, tokenizer: Path, corpus: Path, args) -> Path:
    config = {
        "model": {"tokenizer": str(tokenizer), "from_scratch": SHAPES[args.shape]},
        "data": {
            "sources": [{"path": str(corpus), "format": "text"}],
            "mask": "all",
            "max_seq_len": args.seq_len,
            "packing": True,
            "cache_dir": str(work / "cache"),
        },
        "train": {
            "max_steps": args.steps,
            "micro_batch_size": args.micro_batch,
            "lr": 3e-4,
            "warmup_steps": 2,
            "precision": args.precision,
            "progress": False,
            "log_every_steps": 1000,
        },
        "eval": {"samples": 0},
        "output": {"save_final": False, "report": False},
    }
    if args.gradient_checkpointing:
        config["model"]["gradient_checkpointing"] = True
    path = work / "scaling.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def one_run(config: Path, out: Path, nproc: int, distributed: str) -> float:
    cmd = [sys.executable, "-m", "sftlab", "train", str(config), "--nproc", str(nproc),
           "--set", f"output.dir={out}", "--set", "output.overwrite=true", "--set", f"train.distributed={distributed}"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return float(json.loads((out / "summary.json").read_text())["tokens_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--nproc", default="1,2", help="process counts, comma-separated (1 is the baseline)")
    ap.add_argument("--distributed", default="ddp", help="ddp,fsdp2,deepspeed (comma-separated)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=4, help="packed rows per process per step")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.nproc.split(",")} | {1})
    engines = [x.strip() for x in args.distributed.split(",") if x.strip()]

    with tempfile.TemporaryDirectory(prefix="sftlab-scaling-") as tmp:
        work = Path(tmp)
        tokenizer, corpus, _ = write_text_corpus(ROOT, work, args.vocab)
        config = run_config(work, tokenizer, corpus, args)
        runs: dict[tuple[int, str], list[float]] = {}
        for r in range(args.repeats):
            plan = [(1, "auto")] + [(n, d) for n in counts if n > 1 for d in engines]
            for n, d in plan if r % 2 == 0 else plan[::-1]:  # alternate the order between repeats
                tps = one_run(config, work / f"run-{n}-{d}-{r}", n, d)
                runs.setdefault((n, d), []).append(tps)
                print(f"repeat {r + 1}: {n} x {d}: {tps:,.0f} tok/s", flush=True)

    base = statistics.median(runs[(1, "auto")])
    rows = []
    print(f"\nshape {args.shape}, {args.precision}, seq {args.seq_len}, micro-batch {args.micro_batch} per process, "
          f"{args.steps} steps, medians of {args.repeats}")  # fmt: skip
    print(f"{'processes':>9} {'distributed':>11} {'tok/s':>10} {'tok/s/proc':>10} {'efficiency':>10}")
    for (n, d), values in sorted(runs.items()):
        tps = statistics.median(values)
        eff = tps / (n * base)
        rows.append({"processes": n, "distributed": d, "tokens_per_s": tps, "runs": values, "efficiency": eff})
        print(f"{n:>9} {d:>11} {tps:>10,.0f} {tps / n:>10,.0f} {eff:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
