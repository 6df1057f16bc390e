"""Where a training step's time goes: ``torch.profiler`` over a few sftlab steps, grouped by kind of work.

    python benchmarks/profile_steps.py [--model .cache/sftlab/models/SmolLM2-135M-Instruct] [--steps 6]
        [--config padded|packed_seg] [--precision bf16|fp32] [--micro-batch 8] [--lora]

The model defaults to the fetched SmolLM2-135M-Instruct (``sftlab model fetch smollm2-135m-instruct``); the
data are the first SST-2 reviews of ``data/sst2/train.jsonl`` as a one-word chat answer (the demo's framing),
rendered by sftlab's own pipeline. The first step (warm-up) runs outside the profile. Self CPU time of every
operator is summed into groups (matmuls, attention, optimizer, dtype casts, the LM head's log-softmax / loss,
norms and activations, copies and indexing, the rest), for the forward and backward together; the table
prints each group's share of the profiled wall time and its top operators.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {sentence}"
# (group, operator-name regex), first match wins; self times of the operators are summed per group.
GROUPS = [
    ("optimizer", r"adam|optimizer|_foreach|lerp|addcdiv|addcmul"),
    ("matmul", r"aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
    ("attention", r"scaled_dot_product|flash|_efficient_attention|attention"),
    ("casts", r"aten::(to|_to_copy|copy_)$"),
    ("head/loss", r"log_softmax|cross_entropy|nll_loss|_softmax_backward|logsumexp"),
    ("norms/activations", r"rsqrt|silu|mul|pow|mean|add|sigmoid|rms_norm|div|neg|cat|sub"),
    ("indexing/memory", r"index|gather|scatter|embedding|empty|zero|fill|clone|contiguous|view|reshape|slice|cumsum"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / ".cache" / "sftlab" / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--config", choices=("padded", "packed_seg"), default="padded")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--top", type=int, default=3, help="operators shown per group")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from sftlab.config import SourceConfig, load_config
    from sftlab.data.pipeline import build_dataset
    from sftlab.model.load import load_model, load_tokenizer
    from sftlab.train.loop import train

    packed = args.config == "packed_seg"
    cfg = load_config(None, [
        f"model.name_or_path={args.model}", "train.progress=false", f"train.micro_batch_size={args.micro_batch}",
        f"train.precision={args.precision}", "train.lr=5e-5", "train.log_every_steps=1000000",
        f"data.max_seq_len={args.max_len}", f"data.packing={str(packed).lower()}",
        f"train.segment_attention={str(packed).lower()}", "output.save_final=false", "data.cache_dir=null",
        f"lora.enabled={str(args.lora).lower()}", "lora.dropout=0",
    ])
    rows = (args.steps + 1) * args.micro_batch * (8 if packed else 1)
    source = SourceConfig(path=str(ROOT / "data" / "sst2" / "train.jsonl"), format="classification",
                          prompt_template=PROMPT, completion_template="{label}",
                          label_map={"0": "negative", "1": "positive"}, limit=rows)
    cfg = replace(cfg, data=replace(cfg.data, sources=(source,), mask="completion"))
    tokenizer = load_tokenizer(cfg.model)
    dataset, _ = build_dataset(cfg.data, tokenizer, progress=False)
    model = load_model(cfg.model, tokenizer)
    if args.lora:
        from sftlab.model.adapters import apply_lora

        model = apply_lora(model, cfg.lora)

    with tempfile.TemporaryDirectory() as out:
        train(replace(cfg, train=replace(cfg.train, max_steps=1)), model, tokenizer, dataset, output_dir=out)  # warm-up
        warm = replace(cfg, train=replace(cfg.train, max_steps=args.steps))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            result = train(warm, model, tokenizer, dataset, output_dir=out + "/p")
            wall = time.perf_counter() - t0

    groups: dict[str, float] = defaultdict(float)
    ops: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        group = next((g for g, pat in GROUPS if re.search(pat, ev.key, re.I)), "other")
        groups[group] += us
        ops[group].append((us, ev.key))
    total = sum(groups.values())
    print(f"{args.steps} steps, {result.tokens:,} tokens in {wall:.1f} s = {result.tokens / wall:,.0f} tokens/s "
          f"({args.config}, {args.precision}, micro-batch {args.micro_batch}, {'LoRA' if args.lora else 'full'}, "
          f"torch threads {torch.get_num_threads()}); self CPU time summed over operators: {total / 1e6:.1f} s")
    print("| group | self CPU s | share | top operators (s) |")
    print("|---|---|---|---|")
    for group, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        top = ", ".join(f"`{k}` {t / 1e6:.2f}" for t, k in sorted(ops[group], reverse=True)[: args.top])
        print(f"| {group} | {us / 1e6:.2f} | {100 * us / total:.1f}% | {top} |")


if __name__ == "__main__":
    main()
