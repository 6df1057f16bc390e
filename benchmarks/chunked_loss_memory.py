"""Benchmark: peak memory of sftlab's chunked loss vs plain full-logits cross-entropy (forward + backward).

    python benchmarks/chunked_loss_memory.py [--vocab 50257] [--batch 8] [--seq 512] [--hidden 512] [--repeats 3]

A small random Llama (``--layers`` blocks, tied embeddings, vocab 50,257 like GPT-2) runs one forward + backward
on ``batch x seq`` tokens, every position labelled, in two ways, each in its own subprocess:

- ``plain``: ``model(input_ids, labels=...)``, transformers' own loss: the whole ``[tokens, vocab]`` logits
  tensor (and its float32 copy for the loss) is built and kept for backward;
- ``chunked``: ``sftlab.train.loss.forward_loss_sum`` (``LossHead``): hidden states at labelled positions are
  projected and scored ``chunk_size`` rows at a time, each chunk checkpointed (recomputed in backward).

Memory = the child's peak RSS (``ru_maxrss``) minus its RSS just before the forward pass (model, optimizer-free
weights and the batch are already there), so it is what the forward + backward itself adds. On CUDA the same is
done with ``torch.cuda.max_memory_allocated``. Prints the median of ``--repeats`` alternated runs of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARK = "CHUNKED_LOSS_RESULT "


def current_rss_mb() -> float:
    """Resident set size now (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    import gc
    import resource

    import torch

    from sftlab.model.tiny import build_tiny_llama
    from sftlab.train.loss import forward_loss_sum

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_tiny_llama(
        args.vocab,
        seed=0,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
    ).to(dev)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(dev)
    batch = {"input_ids": ids, "shift_labels": torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)}
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    gc.collect()
    base = current_rss_mb()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    with autocast:
        if args.mode == "plain":
            loss = model(input_ids=ids, labels=ids).loss
        else:
            loss_sum, n = forward_loss_sum(model, batch, chunk_size=args.chunk_size)
            loss = loss_sum / n
    loss.backward()
    if dev == "cuda":
        torch.cuda.synchronize()
    out = {
        "seconds": time.perf_counter() - t0,
        "loss": float(loss),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base,
        "base_mb": base,
    }
    if dev == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 - base_gpu
    print(MARK + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=2048, help="LossHead rows per chunk (sftlab's default)")
    p.add_argument("--dtype", default="fp32,bf16", help="fp32, bf16 (autocast), or both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        child(args)
        return
    tokens = args.batch * args.seq
    logits_mb = tokens * args.vocab * 4 / 2**20
    print(
        f"vocab {args.vocab:,}, {args.batch} x {args.seq} = {tokens:,} labelled tokens, hidden {args.hidden}, "
        f"{args.layers} layers; one float32 [tokens, vocab] logits tensor = {logits_mb:,.0f} MB"
    )
    results = []
    for dtype in args.dtype.split(","):
        runs = {"plain": [], "chunked": []}
        for rep in range(args.repeats):
            for mode in ("plain", "chunked") if rep % 2 == 0 else ("chunked", "plain"):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--dtype", dtype]
                for k in ("vocab", "batch", "seq", "hidden", "layers", "chunk_size"):
                    cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith(MARK)), None)
                if line is None:
                    raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
                runs[mode].append(json.loads(line[len(MARK) :]))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
        row = {
            "dtype": dtype,
            "vocab": args.vocab,
            "tokens": tokens,
            "plain_peak_mb": med["plain"]["peak_mb"],
            "chunked_peak_mb": med["chunked"]["peak_mb"],
            "ratio": med["plain"]["peak_mb"] / med["chunked"]["peak_mb"],
            "plain_seconds": med["plain"]["seconds"],
            "chunked_seconds": med["chunked"]["seconds"],
            "plain_loss": med["plain"]["loss"],
            "chunked_loss": med["chunked"]["loss"],
        }
        if "peak_gpu_mb" in med["plain"]:
            row["plain_peak_gpu_mb"] = med["plain"]["peak_gpu_mb"]
            row["chunked_peak_gpu_mb"] = med["chunked"]["peak_gpu_mb"]
        results.append(row)
        print(
            f"{dtype}: forward + backward adds {row['plain_peak_mb']:,.0f} MB (plain full logits) vs "
            f"{row['chunked_peak_mb']:,.0f} MB (sftlab chunked) = {row['ratio']:.1f}x less; "
            f"{row['plain_seconds']:.2f} s vs {row['chunked_seconds']:.2f} s; "
            f"loss {row['plain_loss']:.4f} vs {row['chunked_loss']:.4f} (median of {args.repeats})"
            + (
                f"; GPU {row['plain_peak_gpu_mb']:,.0f} vs {row['chunked_peak_gpu_mb']:,.0f} MB"
                if "plain_peak_gpu_mb" in row
                else ""
            ),
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
