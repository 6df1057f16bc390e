"""Training-loop invariants on a tiny random Llama: accumulation equivalence, determinism, learning."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from sftlab.config import load_config
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.loop import train

VOCAB = 96


def make_dataset(n: int = 16, seed: int = 0) -> Dataset:
    """Mixed-length sequences; the first third of each is prompt (no loss)."""
    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": [], "length": [], "source": []}
    for _ in range(n):
        length = rng.randint(5, 40)
        ids = [rng.randrange(4, VOCAB) for _ in range(length)]
        cut = length // 3
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * cut + ids[cut:])
        rows["length"].append(length)
        rows["source"].append("synthetic")
    return Dataset.from_dict(rows)


def run(tmp_path, overrides, seed=0, model=None):
    cfg = load_config(None, ["train.progress=false", "train.log_every_steps=1", *overrides])
    model = model or build_tiny_llama(VOCAB, seed=seed)

    class Tok:
        pad_token_id = 0

    return model, train(cfg, model, Tok(), make_dataset(), output_dir=tmp_path)


def grads_after_one_step(tmp_path, micro: int, accum: int):
    """Gradients of the first optimizer step (lr 0 so weights stay put; clipping off)."""
    model = build_tiny_llama(VOCAB, seed=1)
    captured = {}
    orig_step = torch.optim.AdamW.step

    def capture(self, *a, **k):
        if not captured:
            captured.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        return orig_step(self, *a, **k)

    torch.optim.AdamW.step = capture
    try:
        _, res = run(
            tmp_path,
            [
                f"train.micro_batch_size={micro}",
                f"train.grad_accum={accum}",
                "train.max_steps=1",
                "train.max_grad_norm=0",
                "data.group_by_length=false",
            ],
            model=model,
        )
    finally:
        torch.optim.AdamW.step = orig_step
    return res.losses[0], captured


def test_batch8_equals_batch1_times_accum8(tmp_path):
    loss_a, grads_a = grads_after_one_step(tmp_path / "a", micro=8, accum=1)
    loss_b, grads_b = grads_after_one_step(tmp_path / "b", micro=1, accum=8)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_per_microbatch_mean_would_differ(tmp_path):
    """Negative control: averaging per micro-batch (the common bug) changes the loss, so the test above can fail."""
    ds = make_dataset()
    window = list(range(8))
    n = [sum(1 for x in ds[i]["labels"][1:] if x != -100) for i in window]
    # per-sequence means averaged, vs one token-normalised mean: different unless all counts are equal
    assert len(set(n)) > 1


def test_same_seed_bitwise_identical_losses(tmp_path):
    ov = ["train.micro_batch_size=4", "train.grad_accum=2", "train.max_steps=4", "train.lr=1e-3"]
    _, a = run(tmp_path / "a", ov)
    _, b = run(tmp_path / "b", ov)
    assert a.losses == b.losses  # bitwise on CPU
    _, c = run(tmp_path / "c", ov + ["train.seed=7"])
    assert c.losses != a.losses


def test_loss_decreases_and_metrics_written(tmp_path):
    import json

    ov = ["train.micro_batch_size=4", "train.epochs=8", "train.lr=3e-3", "train.warmup_steps=2"]
    _, res = run(tmp_path, ov)
    assert res.steps == 32
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4 - 0.3
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 33))
    for key in ("epoch", "loss", "lr", "grad_norm", "tokens", "trained_tokens", "tokens_per_s", "elapsed_s"):
        assert key in lines[0]
    assert lines[-1]["epoch"] == pytest.approx(8.0)
    assert lines[-1]["tokens"] == 8 * sum(make_dataset()["length"])


def test_packed_training_matches_unpacked_first_step(tmp_path):
    """Packed padding-free rows give the same first-step loss as padded batches of the same sequences."""
    common = [
        "train.max_steps=1",
        "train.max_grad_norm=0",
        "data.max_seq_len=4096",
        "data.shuffle=false",
        "train.micro_batch_size=16",
    ]
    _, padded = run(tmp_path / "p", common)
    _, packed = run(tmp_path / "k", common + ["data.packing=true"])
    assert packed.losses[0] == pytest.approx(padded.losses[0], rel=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_split_truncation_equals_training_on_the_pieces(tmp_path, packing):
    """``truncation: split`` trains each max_seq_len piece of a long sequence as a sequence of its own: the first
    step equals a run on a dataset holding those pieces (pieces with nothing to train left out)."""
    from sftlab.data.types import count_trained

    data, width = make_dataset(), 16
    rows = {"input_ids": [], "labels": [], "length": [], "source": []}
    for ids, labels in zip(data["input_ids"], data["labels"]):
        for s in range(0, len(ids), width):
            if count_trained(labels[s : s + width]):
                rows["input_ids"].append(ids[s : s + width])
                rows["labels"].append(labels[s : s + width])
                rows["length"].append(len(ids[s : s + width]))
                rows["source"].append("synthetic")
    assert max(data["length"]) > width and len(rows["length"]) > len(data)
    common = ["train.max_steps=1", "train.max_grad_norm=0", "data.shuffle=false", "train.micro_batch_size=64"]
    common += [f"data.packing={str(packing).lower()}"]
    cfg = load_config(None, ["train.progress=false", *common, f"data.max_seq_len={width}", "data.truncation=split"])
    ref_cfg = load_config(None, ["train.progress=false", *common, f"data.max_seq_len={width}"])

    class Tok:
        pad_token_id = 0

    split = train(cfg, build_tiny_llama(VOCAB, seed=3), Tok(), data, output_dir=tmp_path / "s")
    ref = train(ref_cfg, build_tiny_llama(VOCAB, seed=3), Tok(), Dataset.from_dict(rows), output_dir=tmp_path / "r")
    assert split.split_sequences == sum(n > width for n in data["length"])
    assert split.trained_tokens == ref.trained_tokens and split.tokens == ref.tokens
    assert split.losses[0] == pytest.approx(ref.losses[0], rel=1e-5)


def test_the_model_is_sdpa_again_after_training_ends_or_stops(tmp_path, monkeypatch):
    from sftlab.train import loop
    from sftlab.train.runtime import TrainingStopped

    model, _ = run(tmp_path / "done", ["train.max_steps=1"])
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setenv("SFTLAB_FAULTS", "nan_every_step")
    model = build_tiny_llama(VOCAB, seed=0)
    seen, plain = [], loop.forward_loss_sum

    def spy(head, *args, **kwargs):
        seen.append(model.config._attn_implementation)
        return plain(head, *args, **kwargs)

    monkeypatch.setattr(loop, "forward_loss_sum", spy)
    with pytest.raises(TrainingStopped):
        run(tmp_path / "stopped", ["train.max_steps=4", "train.max_skipped_steps=2"], model=model)
    assert seen and set(seen) == {"sftlab_sdpa"}  # trained on sftlab's attention (CPU) ...
    assert model.config._attn_implementation == "sdpa"  # ... and handed back on sdpa, though it stopped
