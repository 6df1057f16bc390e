"""Benchmark: label-scoring classification of the 872 SST-2 dev sentences with the tiny Llama.

Model: hidden 256, 4 layers, 4 heads (2 kv), vocab 4096 (random weights: speed does not depend on them);
tokenizer: byte-level BPE trained on the WikiText-2 / Tiny Shakespeare text of ../shared/data/text.
Prints the median of ``--runs`` timed runs (after one untimed warm-up) in seconds and items/s.

    python benchmarks/eval_label_scoring.py [--batch-size 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sftlab.config import TaskConfig
from sftlab.eval.classification import score_classification
from sftlab.eval.tasks import load_task_items
from sftlab.model.tiny import build_tiny_llama, train_bpe_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT_FILES = ("text/wikitext-2-raw-v1.wiki.test.LF.raw", "text/tinyshakespeare.input.txt")


def read_lines(data: Path):
    """Lines of the tokenizer training text."""
    for rel in TEXT_FILES:
        with open(data / rel, encoding="utf-8") as f:
            yield from f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = Path(args.data)

    t0 = time.perf_counter()
    tok = train_bpe_tokenizer(read_lines(data), vocab_size=4096)
    model = build_tiny_llama(
        4096,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    task = TaskConfig(
        name="sst2_dev",
        path=str(data / "sentiment/sst2/dev.jsonl"),
        prompt_template="Review: {sentence}\nSentiment:",
        label_map={"0": " negative", "1": " positive"},
    )
    items = load_task_items(task)
    print(
        f"setup (tokenizer training, model, data): {time.perf_counter() - t0:.1f} s; {len(items)} items, "
        f"torch threads {torch.get_num_threads()}, batch size {args.batch_size}"
    )

    score_classification(model, tok, items[:64], task, args.batch_size)  # warm-up (allocator, kernels)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        res = score_classification(model, tok, items, task, args.batch_size)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"runs: {', '.join(f'{x:.2f}' for x in times)} s; accuracy {res['accuracy']:.3f} (random weights)")
    print(f"label scoring, {len(items)} SST-2 dev items: median {med:.2f} s = {len(items) / med:.0f} items/s")


if __name__ == "__main__":
    main()
