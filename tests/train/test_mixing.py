"""Mixtures: weights give their shares (exactly in the data, within sampling error in the batches), counts are
exact, draws are seeded, and the per-source loss in metrics.jsonl is each source's own cross-entropy."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch
from datasets import Dataset

from sftlab.config import ConfigError, MixtureConfig, load_config
from sftlab.data.mixing import MixSpec, mix_dataset, plan_mixture, sample_indices, target_counts
from sftlab.model.tiny import build_tiny_llama
from sftlab.train.batches import collate_packed, collate_padded, plan_windows
from sftlab.train.loss import LossHead, SourceLoss, forward_loss_sum

SIZES = {"a": 1000, "b": 5000, "c": 300}


def rows(sizes=SIZES):
    return [name for name, n in sizes.items() for _ in range(n)]


def encoded(sizes=SIZES, seed=0):
    rng = random.Random(seed)
    names = rows(sizes)
    lengths = [rng.randint(4, 30) for _ in names]
    return Dataset.from_dict(
        {
            "input_ids": [[5] * n for n in lengths],
            "labels": [[5] * n for n in lengths],
            "length": lengths,
            "num_trained": [n // 2 for n in lengths],
            "source": names,
            "origin": [f"{s}:{i}" for i, s in enumerate(names)],
        }
    )


def test_weights_give_their_shares_exactly_in_the_data_and_within_sampling_error_in_batches():
    specs = [MixSpec("a", weight=0.7), MixSpec("b", weight=0.2), MixSpec("c", weight=0.1)]
    mixed, report = mix_dataset(encoded(), specs, MixtureConfig())
    # no record repeated: the mixture is as large as the scarcest source allows (a: 1000 / 0.7)
    assert len(mixed) == math.floor(1000 / 0.7) == 1428
    counts = Counter(mixed["source"])
    assert sum(counts.values()) == 1428 and all(abs(counts[s.name] - 1428 * s.weight) < 1 for s in specs)
    for s in specs:
        assert abs(counts[s.name] / len(mixed) - s.weight) <= 1 / len(mixed)
        assert report["sources"][s.name]["records_share"] == pytest.approx(counts[s.name] / len(mixed), abs=1e-4)
    assert len(set(mixed["origin"])) == len(mixed)  # down-sampled: distinct records
    # the training loop draws windows from a seeded shuffle: per-window shares scatter binomially around the weight
    src = mixed["source"]
    draws = [src[i] for w in plan_windows(mixed["length"], 32, seed=3, epoch=0)[:20] for i in w]
    for s in specs:
        share, sigma = Counter(draws)[s.name] / len(draws), math.sqrt(s.weight * (1 - s.weight) / len(draws))
        assert abs(share - s.weight) < 4 * sigma, (s.name, share)
    # tokens and trained tokens are reported per source and add up
    assert sum(v["tokens"] for v in report["sources"].values()) == sum(mixed["length"]) == report["tokens"]
    assert sum(v["trained_tokens"] for v in report["sources"].values()) == sum(mixed["num_trained"])


def test_up_sampling_repeats_every_record_evenly():
    specs = [MixSpec("a", weight=0.5), MixSpec("c", weight=0.5)]
    picked, sizes, wanted = plan_mixture(rows({"a": 1000, "c": 300}), specs, MixtureConfig(total=2000))
    assert wanted == {"a": 1000, "c": 1000} and sizes == {"a": 1000, "c": 300}
    reps = Counter(i for i in picked if i >= 1000)  # rows of c
    assert sorted(set(reps.values())) == [3, 4] and sum(reps.values()) == 1000  # 3 copies + 100 drawn once more
    assert Counter(i for i in picked if i < 1000) == Counter(range(1000))


def test_counts_and_fractions_are_exact():
    specs = [MixSpec("a", count=2500), MixSpec("b", fraction=0.01), MixSpec("c")]
    mixed, report = mix_dataset(encoded(), specs, MixtureConfig(seed=7))
    assert Counter(mixed["source"]) == {"a": 2500, "b": 50, "c": 300}
    assert Counter(Counter(mixed["origin"][:2500]).values()) == {3: 500, 2: 500}  # a: 1000 records, 2.5 times each
    assert report["mode"] == "counts" and report["sources"]["a"]["repeats"] == 2.5


def test_draws_are_seeded_and_independent_of_other_sources():
    a = sample_indices(1000, 100, seed=0, name="a")
    assert a == sample_indices(1000, 100, seed=0, name="a")
    assert a != sample_indices(1000, 100, seed=1, name="a")
    assert len(set(a)) == 100
    one = plan_mixture(rows(), [MixSpec("a", count=100), MixSpec("b", count=10), MixSpec("c")], MixtureConfig())[0]
    two = plan_mixture(rows(), [MixSpec("a", count=100), MixSpec("b", count=900), MixSpec("c")], MixtureConfig())[0]
    assert one[:100] == two[:100]  # a's records do not depend on b's count


def test_temperature_flattens_shares():
    plain = target_counts(SIZES, [MixSpec(n) for n in SIZES], MixtureConfig(temperature=1.0))
    assert plain == SIZES  # T = 1: proportional to size, nothing dropped or repeated
    flat = target_counts(SIZES, [MixSpec(n) for n in SIZES], MixtureConfig(temperature=1000.0, total=3000))
    assert all(abs(v - 1000) <= 2 for v in flat.values())
    t2 = target_counts(SIZES, [MixSpec(n) for n in SIZES], MixtureConfig(temperature=2.0, total=10_000))
    expected = {k: 10_000 * math.sqrt(v) / sum(math.sqrt(x) for x in SIZES.values()) for k, v in SIZES.items()}
    assert all(abs(t2[k] - expected[k]) <= 1 for k in SIZES)


@pytest.mark.parametrize(
    "specs, mixture, message",
    [
        ([MixSpec("a", weight=1), MixSpec("b", count=3)], MixtureConfig(), "use weights on every source"),
        ([MixSpec("a", weight=1), MixSpec("b")], MixtureConfig(), "has no weight"),
        ([MixSpec("a", weight=1)], MixtureConfig(temperature=2.0), "temperature sets the shares"),
        ([MixSpec("a", weight=0), MixSpec("b", weight=0)], MixtureConfig(), "sum to 0"),
        ([MixSpec("a", weight=-1)], MixtureConfig(), ">= 0"),
    ],
)
def test_bad_mixtures_are_clear_errors(specs, mixture, message):
    with pytest.raises(ConfigError, match=message):
        target_counts({"a": 10, "b": 10}, specs, mixture)


def _batch_sources():
    rng = random.Random(0)
    seqs = [[rng.randrange(4, 64) for _ in range(rng.randint(5, 14))] for _ in range(6)]
    groups = [0, 1, 0, 2, 1, 2]
    return seqs, groups


@pytest.mark.parametrize("packed", [False, True])
def test_per_source_loss_sums_are_each_sources_own_loss(packed):
    """The per-source sums of one mixed batch equal the loss of each source's sequences run alone."""
    seqs, groups = _batch_sources()
    model = build_tiny_llama(64, seed=0).eval()
    acc = SourceLoss(["x", "y", "z"], groups, "cpu")
    examples = [{"input_ids": s, "labels": s} for s in seqs]
    if packed:
        per_row = [[0, 1], [2, 3, 4], [5]]
        batch = collate_packed([[examples[i] for i in r] for r in per_row], pad_id=0)
    else:
        per_row = [[i] for i in range(6)]
        batch = collate_padded(examples, pad_id=0)
    batch["group_ids"] = acc.group_ids(batch, per_row)
    with torch.no_grad():
        total, n = forward_loss_sum(LossHead(model), batch, group_sums=acc.sums)
        plain, _ = forward_loss_sum(LossHead(model), {k: v for k, v in batch.items() if k != "group_ids"})
        torch.testing.assert_close(total, plain, rtol=1e-6, atol=0)
        for g in range(3):
            alone = collate_padded([e for e, gg in zip(examples, groups) if gg == g], pad_id=0)
            ref, k = forward_loss_sum(LossHead(model), alone)
            torch.testing.assert_close(acc.sums[g], ref, rtol=1e-5, atol=1e-5)
            assert acc.counts[g] == k
    assert sum(acc.counts.tolist()) == n


def test_training_logs_loss_per_source_and_the_mixture(tmp_path, tiny_tokenizer_dir):
    from sftlab.train.run import run_training

    for name, word in (("alpha", "sun"), ("beta", "moon")):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"the {word} is number {i}"}) + "\n" for i in range(40))
        )
    scratch = "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2}"
    cfg = load_config(
        None,
        [
            f"model.tokenizer={tiny_tokenizer_dir}",
            f"model.from_scratch={scratch}",
            f"data.sources=[{{path: {tmp_path / 'alpha.jsonl'}, format: text, weight: 3}},"
            f" {{path: {tmp_path / 'beta.jsonl'}, format: text, weight: 1}}]",
            "data.mask=all",
            "train.log_every_steps=1",
            "data.group_by_length=false",
            "train.max_steps=3",
            "train.micro_batch_size=16",
            "train.lr=1e-2",
            "train.progress=false",
            f"output.dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    summary = run_training(cfg)
    mixture = json.loads((tmp_path / "run" / "data_report.json").read_text())["train"]["mixture"]
    assert {k: v["selected"] for k, v in mixture["sources"].items()} == {"alpha": 40, "beta": 13}
    assert summary["train_records"] == 53
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for r in lines:  # one step per line: the step's loss is a token-weighted mean of the two sources' losses
        lo, hi = sorted((r["loss/alpha"], r["loss/beta"]))
        assert lo - 1e-5 <= r["loss"] <= hi + 1e-5 and lo < hi
