"""Benchmark: exact + near deduplication (``data.clean``) of GLUE SST-2 train and of a synthetic 1M-record set.

    python benchmarks/dedup.py [--cases sst2,synthetic] [--records 1000000] [--dup-share 0.05]

Each case runs in a fresh process (so peak memory is its own) and reports records/s of the pass (word ids,
exact duplicates, MinHash + LSH near duplicates with exact Jaccard verification, union-find; filters off)
and the process's peak RSS (with the records it holds: what a user's process would hold too).

- ``sst2``: the 67,349 phrase-level rows of ``../shared/data/sentiment/sst2_glue/train.tsv`` read as
  classification records (prompt "Review: {sentence}\\nSentiment:", label as the response); reading
  them (datasets CSV -> Arrow, conversion) is timed separately.
- ``synthetic``: ``--records`` short records of 5-40 words drawn from a Zipf-like vocabulary of 50,000 words,
  of which ``--dup-share`` are injected near duplicates of an earlier record of >= 20 words: one word replaced,
  one appended, or the first removed (a fifth of them also changed in case and punctuation). Recall is
  measured against the injected pairs whose shingle Jaccard similarity is >= the threshold (the pairs the
  definition covers); every reported duplicate is verified exactly, so all are true near duplicates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def dedup_config():
    from sftlab.config import CleanConfig, FilterConfig

    return CleanConfig(filter=FilterConfig(enabled=False))


def run_sst2(args) -> dict:
    from sftlab.config import SourceConfig
    from sftlab.data.clean import clean_records, load_records

    src = SourceConfig(
        path=args.sst2,
        format="classification",
        prompt_template="Review: {sentence}\nSentiment:",
        label_map={"0": "negative", "1": "positive"},
    )
    t0 = time.perf_counter()
    records = load_records((src,), ["sst2_glue"], hf_cache=args.hf_cache)
    read_s = time.perf_counter() - t0
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    result = clean_records(records, dedup_config())
    elapsed = time.perf_counter() - t0
    r = result.report
    return {
        "case": "sst2",
        "records": len(records),
        "read_s": round(read_s, 2),
        "dedup_s": round(elapsed, 2),
        "records_per_s": round(len(records) / elapsed),
        "timings_s": r.timings_s,
        "exact_duplicates": r.removed_totals().get("exact_dedup", {}).get("exact_duplicate", 0),
        "near_duplicates": r.removed_totals().get("near_dedup", {}).get("near_duplicate", 0),
        "near_pairs": r.near_dedup,
        "examples": r.examples.get("near_dedup", [])[:3],
        "peak_rss_mb_before_dedup": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def make_synthetic(n: int, dup_share: float, seed: int = 0):
    """(Records, injected {duplicate: original}) of ``n`` records."""
    import numpy as np

    from sftlab.data.clean.records import Records

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    n_dup = int(n * dup_share)
    n_base = n - n_dup
    lengths = rng.integers(5, 41, size=n_base)
    ids = np.minimum((rng.pareto(1.2, size=int(lengths.sum())) * 200).astype(np.int64), len(vocab) - 1)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    texts = [" ".join(vocab[ids[offsets[i] : offsets[i + 1]]].tolist()) for i in range(n_base)]
    long_enough = np.flatnonzero(lengths >= 20)
    # Each duplicate goes right after a random later position: originals always come first.
    originals = np.sort(rng.choice(long_enough, size=n_dup, replace=True))
    kinds = rng.integers(0, 3, size=n_dup)
    noisy = rng.random(n_dup) < 0.2
    insert_at = rng.integers(originals, n_base)  # a duplicate comes after its original, anywhere later
    dups = []
    for orig, kind, noise, at in zip(originals.tolist(), kinds.tolist(), noisy.tolist(), insert_at.tolist()):
        words = texts[orig].split()
        if kind == 0:
            words[int(rng.integers(0, len(words)))] = str(vocab[int(rng.integers(0, len(vocab)))])
        elif kind == 1:
            words.append(str(vocab[int(rng.integers(0, len(vocab)))]))
        else:
            words = words[1:]
        text = " ".join(words)
        if noise:
            text = text.upper().replace(" ", ",  ") + "!"
        dups.append((at, orig, text))
    dups.sort(key=lambda d: d[0])
    records = Records()
    injected, final_index = {}, {}
    k = 0
    for i, text in enumerate(texts):
        records.add(f"synthetic:{len(records) + 1}", "synthetic", len(records), "", text)
        final_index[i] = len(records) - 1
        while k < len(dups) and dups[k][0] == i:
            records.add(f"synthetic:{len(records) + 1}", "synthetic", len(records), "", dups[k][2])
            injected[len(records) - 1] = final_index[dups[k][1]]
            k += 1
    records.source_names = ["synthetic"]
    return records, injected


def run_synthetic(args) -> dict:
    import numpy as np

    from sftlab.data.clean import clean_records
    from sftlab.data.clean.dedup import jaccard_pairs
    from sftlab.data.clean.text import Vocab, encode_texts, shingle_sets

    t0 = time.perf_counter()
    records, injected = make_synthetic(args.records, args.dup_share)
    make_s = time.perf_counter() - t0
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    result = clean_records(records, dedup_config())
    elapsed = time.perf_counter() - t0
    peak = peak_rss_mb()
    r = result.report
    # Recall against the injected pairs (exact Jaccard computed here, outside the timed pass).
    pairs = np.array(sorted((o, d) for d, o in injected.items()), dtype=np.int64)
    cfg = dedup_config().dedup
    sets = shingle_sets(encode_texts(records.conversations(), Vocab()), cfg.shingle_words)
    sim = jaccard_pairs(sets, pairs)
    removed = result.removed
    caught = np.array([d in removed for _, d in pairs.tolist()])
    covered = sim >= cfg.threshold
    not_injected = sum(1 for i in removed if i not in injected)
    return {
        "case": "synthetic",
        "records": len(records),
        "make_s": round(make_s, 2),
        "dedup_s": round(elapsed, 2),
        "records_per_s": round(len(records) / elapsed),
        "timings_s": r.timings_s,
        "injected": len(injected),
        "injected_jaccard_ge_threshold": int(covered.sum()),
        "recall_of_those": round(float(caught[covered].mean()), 4) if covered.any() else None,
        "caught_below_threshold": int(caught[~covered].sum()),
        "exact_duplicates": r.removed_totals().get("exact_dedup", {}).get("exact_duplicate", 0),
        "near_duplicates": r.removed_totals().get("near_dedup", {}).get("near_duplicate", 0),
        "removed_not_injected": not_injected,
        "near_pairs": r.near_dedup,
        "peak_rss_mb_before_dedup": round(rss_before),
        "peak_rss_mb": round(peak),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="sst2,synthetic")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--dup-share", type=float, default=0.05)
    p.add_argument("--sst2", default=str(SHARED / "sentiment" / "sst2_glue" / "train.tsv"))
    p.add_argument("--hf-cache", default=".cache/sftlab/hf")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.case:
        out = run_sst2(args) if args.case == "sst2" else run_synthetic(args)
        print(json.dumps(out))
        return
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--records", str(args.records),
               "--dup-share", str(args.dup_share), "--sst2", args.sst2, "--hf-cache", args.hf_cache]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {case} failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(res, indent=2))
        print(
            f"{case}: {res['records']:,} records, exact + near dedup in {res['dedup_s']} s = "
            f"{res['records_per_s']:,} records/s, peak RSS {res['peak_rss_mb']:,} MB "
            f"({res['peak_rss_mb_before_dedup']:,} MB before the pass); exact duplicates "
            f"{res['exact_duplicates']:,}, near duplicates {res['near_duplicates']:,}"
        )


if __name__ == "__main__":
    main()
