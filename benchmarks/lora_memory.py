"""Peak memory of LoRA vs full fine-tuning vs selective training on the same model and data.

Each configuration runs in its own process (peak RSS of that process, and peak CUDA memory on a GPU):
a Llama of hidden 512 x 8 layers (27.8M parameters, vocab 8192) for a few steps of 8 x 512 tokens.

    python benchmarks/lora_memory.py [--steps 4] [--hidden 512] [--layers 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

CONFIGS = {
    "full": [],
    "lora_r16_all_linear": ["lora"],
    "lora_r16_no_dropout": ["lora", "nodrop"],
    "select_ffn_middle_band": ["select.preset=ffn_middle_band"],
}


def child(name: str, steps: int, hidden: int, layers: int) -> None:
    import random

    import torch
    from datasets import Dataset

    from sftlab.config import LoraConfig, SelectConfig, load_config
    from sftlab.model.adapters import apply_lora
    from sftlab.model.select import apply_selection
    from sftlab.model.tiny import build_tiny_llama
    from sftlab.train.loop import train

    vocab = 8192
    model = build_tiny_llama(vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                             num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4)
    if torch.cuda.is_available():
        model = model.cuda()
    if "lora" in CONFIGS[name]:
        dropout = 0.0 if "nodrop" in CONFIGS[name] else 0.05
        model = apply_lora(model, LoraConfig(enabled=True, r=16, alpha=32, dropout=dropout))
    elif CONFIGS[name]:
        apply_selection(model, SelectConfig(preset=CONFIGS[name][0].split("=")[1]))
    rng = random.Random(0)
    ids = [[rng.randrange(10, vocab) for _ in range(512)] for _ in range(8 * steps)]
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids, "length": [512] * len(ids)})

    class Tok:
        pad_token_id = 0

    cfg = load_config(None, [f"train.max_steps={steps}", "train.micro_batch_size=8", "train.progress=false",
                             "train.precision=bf16", "train.lr=1e-4"])
    res = train(cfg, model, Tok(), ds, output_dir=f"{tempfile.gettempdir()}/sftlab-lora-mem-{name}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"config": name, "trainable": trainable, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "tokens_per_s": res.tokens / res.elapsed_s}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.hidden, args.layers)
        return 0
    rows = []
    for name in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--hidden",
                               str(args.hidden), "--layers", str(args.layers)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:])
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full = rows[0]["peak_rss_mb"]
    print(f"{'config':26} {'trainable':>12} {'peak RSS MB':>12} {'vs full':>8} {'tok/s':>8}")
    for r in rows:
        print(f"{r['config']:26} {r['trainable']:>12,} {r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / full:>8.2f} "
              f"{r['tokens_per_s']:>8.0f}" + (f"  cuda {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
