"""Benchmark: tokenise the 67,349-row GLUE SST-2 train set with GPT-2 in parallel batches (records/s).

    python benchmarks/tokenize_sst2.py [--runs 3] [--num-proc 2]

Each run is a full ``build_dataset`` (classification -> plain template -> mask -> report) with the
tokenised-data cache off, so every run tokenises; datasets' own CSV -> Arrow conversion is cached after
the first load, as it would be in a second training run. Prints each run and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "sentiment" / "sst2_glue" / "train.tsv"))
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt2_hf"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--num-proc", type=int, default=2)
    args = p.parse_args()

    from transformers import AutoTokenizer

    from sftlab.config import DataConfig, SourceConfig
    from sftlab.data.pipeline import build_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    source = SourceConfig(
        path=args.data,
        format="classification",
        prompt_template="Review: {sentence}\nSentiment:",
        label_map={"0": "negative", "1": "positive"},
    )
    cfg = DataConfig(
        sources=(source,), template="plain", max_seq_len=128, num_proc=args.num_proc, cache_dir=None
    )
    build_dataset(
        cfg, tokenizer, progress=False
    )  # warm-up: CSV -> Arrow conversion, worker start-up code paths
    rates = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        ds, report = build_dataset(cfg, tokenizer, progress=False)
        elapsed = time.perf_counter() - t0
        rates.append(report.records_in / elapsed)
        print(
            f"run {i + 1}: {report.records_in:,} records in {elapsed:.2f} s = {rates[-1]:,.0f} records/s "
            f"({report.total_tokens:,} tokens)"
        )
    print(f"median: {statistics.median(rates):,.0f} records/s (num_proc={args.num_proc}, {len(ds):,} kept)")
    print(report.summary_line())


if __name__ == "__main__":
    main()
