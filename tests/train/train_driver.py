"""Run a small deterministic training in its own process (kill / resume and multi-process tests).

usage: python train_driver.py OUT_DIR [override ...]   (overrides as for --set; `lora=1` adds LoRA,
`lora_nodrop=1` LoRA without dropout; `select.*` overrides train only the selected tensors)
Writes OUT_DIR/final.safetensors (all parameters) at the end; exit code as the CLI's.
"""

from __future__ import annotations

import os
import random
import sys

from datasets import Dataset
from safetensors.torch import save_file

from sftlab.config import LoraConfig, load_config
from sftlab.model.adapters import apply_lora
from sftlab.model.select import apply_selection, is_active
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.loop import train
from sftlab.train.runtime import TrainingStopped

VOCAB = 64


def dataset() -> Dataset:
    rng = random.Random(0)
    rows = {"input_ids": [], "labels": [], "length": [], "source": []}
    for i in range(48):
        ids = [rng.randrange(4, VOCAB) for _ in range(rng.randint(4, 30))]
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * 2 + ids[2:])
        rows["length"].append(len(ids))
        rows["source"].append("a" if i % 3 else "b")
    return Dataset.from_dict(rows)


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    lora = "lora=1" in args or "lora_nodrop=1" in args
    dropout = 0.0 if "lora_nodrop=1" in args else 0.1  # dropout masks differ per process count
    overrides = [a for a in args if a not in ("lora=1", "lora_nodrop=1")]
    cfg = load_config(
        None,
        [
            "train.progress=false",
            "train.log_every_steps=1",
            "train.max_steps=12",
            "train.micro_batch_size=4",
            "train.grad_accum=2",
            "train.lr=3e-3",
            "train.weight_decay=0.1",
            "train.warmup_steps=2",
            *overrides,
        ],
    )
    model = build_tiny_llama(VOCAB, seed=0)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=dropout))
    elif is_active(cfg.select):
        apply_selection(model, cfg.select)

    class Tok:
        pad_token_id = 0

    try:
        res = train(cfg, model, Tok(), dataset(), output_dir=out)
    except TrainingStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        # a clean shutdown: leaving gloo's threads to interpreter exit can abort ("terminate called ...")
        state.wait_for_everyone()
        state.destroy_process_group()
    if not state.is_main_process:
        return 0
    if res.full_state_dict is not None:  # FSDP2: the consolidated weights, named as the parameters
        params = {n: res.full_state_dict[n] for n, _ in model.named_parameters()}
    else:
        params = {n: p.detach() for n, p in model.named_parameters()}
    save_file({n: p.contiguous() for n, p in params.items()}, f"{out}/final.safetensors")
    print(f"skipped_steps={res.skipped_steps} resumed_from={res.resumed_from}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and the process group is shut down: skip interpreter teardown, where gloo's
    # background threads can still abort the process ("terminate called without an active exception").
    os._exit(code)
