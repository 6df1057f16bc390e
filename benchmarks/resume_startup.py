"""How long a resumed run waits before its first step, on the 67k-row GLUE SST-2 train set.

Tokenises (or reuses the cache of) ../shared/data/sentiment/sst2_glue/train.tsv with a tiny tokenizer,
trains a tiny model for a few steps with a checkpoint, then resumes near the end of the first epoch and
reports the time from entering the training loop to the first step (plan + optimizer + checkpoint load +
jumping to the data position), fresh vs resumed. Median of --repeats runs.

    python benchmarks/resume_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "sentiment" / "sst2_glue" / "train.tsv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=1024, help="larger = fewer steps to reach the checkpoint")
    args = ap.parse_args()
    if not GLUE.is_file():
        print(f"skipped: {GLUE} not found")
        return 0
    from sftlab.config import load_config
    from sftlab.data.pipeline import build_dataset
    from sftlab.model.tiny import build_tiny_llama, train_bpe_tokenizer

    text = (REPO / "data" / "text" / "tinyshakespeare.txt").read_text().splitlines()
    tok = train_bpe_tokenizer(text, vocab_size=1024)
    tmp = Path(tempfile.mkdtemp())
    base = [f"data.sources.0.path={GLUE}", "data.sources.0.format=classification", "data.template=plain",
            "data.sources.0.prompt_template='Review: {sentence}\\nSentiment:'",
            "data.sources.0.label_map={'0': negative, '1': positive}", f"data.cache_dir={tmp / 'cache'}",
            "train.progress=false", f"train.micro_batch_size={args.micro_batch}"]
    t0 = time.perf_counter()
    ds, report = build_dataset(load_config(None, base).data, tok, progress=False)
    print(f"dataset: {len(ds):,} records, built in {time.perf_counter() - t0:.1f} s (from cache: {report.from_cache})")
    from sftlab.train.loop import train

    fresh, resumed = [], []
    steps_per_epoch = -(-len(ds) // args.micro_batch)
    for r in range(args.repeats):
        out = tmp / f"run{r}"
        # a checkpoint near the end of epoch 1: the resume must jump there without replaying data
        k = steps_per_epoch - 3
        first = load_config(None, [*base, f"train.max_steps={k + 1}", f"train.save_every_steps={k}"])
        t1 = time.perf_counter()
        res = train(first, build_tiny_llama(len(tok), seed=0), tok, ds, output_dir=out)
        fresh.append(res.startup_s)
        print(f"  run {r}: {k + 1} steps in {time.perf_counter() - t1:.0f} s, startup {res.startup_s:.2f} s")
        res2 = train(load_config(None, [*base, f"train.max_steps={k + 2}", "train.resume=auto"]),
                     build_tiny_llama(len(tok), seed=0), tok, ds, output_dir=out)
        assert res2.resumed_from and res2.resumed_from.endswith(f"step-{k:06d}"), res2.resumed_from
        resumed.append(res2.startup_s)
        print(f"  run {r}: resumed at step {k}, startup {res2.startup_s:.2f} s")
    print(f"startup before the first step, median of {args.repeats}: fresh {statistics.median(fresh):.2f} s, "
          f"resumed at step {k} of {steps_per_epoch} (epoch 1) {statistics.median(resumed):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
