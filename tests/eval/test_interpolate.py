"""Weight interpolation reproduces base and tuned exactly at its ends; the trade-off table, Pareto front and
plot; ``sftlab interpolate`` and ``sftlab sweep`` end to end on tiny models."""

from __future__ import annotations

import copy
import doctest
import importlib
import json

import pytest
import torch

from sftlab.cli import main
from sftlab.eval.interpolate import interpolate_into, load_tuned, untie_like
from sftlab.eval.tradeoff import pareto_front
from sftlab.model.tiny import build_tiny_llama

VOCAB = 512


def perturbed(model, seed: int = 1, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 99, 3, 250, 8, 41, 7]])


def test_alpha_0_and_1_give_base_and_tuned_logits_exactly():
    base = build_tiny_llama(VOCAB, seed=0)
    tuned = perturbed(build_tiny_llama(VOCAB, seed=0))
    work = build_tiny_llama(VOCAB, seed=3)
    assert not torch.equal(logits(base, IDS), logits(tuned, IDS))
    torch.testing.assert_close(logits(interpolate_into(work, base, tuned, 0.0), IDS), logits(base, IDS), rtol=0, atol=0)
    torch.testing.assert_close(
        logits(interpolate_into(work, base, tuned, 1.0), IDS), logits(tuned, IDS), rtol=0, atol=0
    )
    half = interpolate_into(work, base, tuned, 0.5)
    for (n, p), pb, pt in zip(half.named_parameters(), base.parameters(), tuned.parameters()):
        torch.testing.assert_close(p, (pb + pt) / 2, rtol=0, atol=1e-7, msg=n)


@pytest.mark.parametrize("target", [("q_proj", "v_proj"), ("embed_tokens", "q_proj")])  # the second: a tied matrix
def test_lora_is_merged_then_interpolated(tmp_path, target):
    from sftlab.config import LoraConfig
    from sftlab.model.adapters import apply_lora, tied_embeddings

    base = build_tiny_llama(VOCAB, seed=0)
    peft_model = apply_lora(build_tiny_llama(VOCAB, seed=0),
                            LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=target))
    with torch.no_grad():  # B starts at zero: give the adapter a non-zero delta
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "lora_embedding_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = load_tuned(tmp_path / "adapter", base)
    base_logits = logits(base, IDS)
    untie_like(base, tuned)
    assert tied_embeddings(base) == tied_embeddings(tuned) == ("embed_tokens" not in target)
    torch.testing.assert_close(logits(base, IDS), base_logits, rtol=0, atol=0)  # untied, it computes the same
    work = perturbed(copy.deepcopy(base), seed=3)
    # alpha 1 is the merged model exactly; it matches the unmerged adapter up to float rounding of the merge
    torch.testing.assert_close(
        logits(interpolate_into(work, base, tuned, 1.0), IDS), logits(tuned, IDS), rtol=0, atol=0
    )
    torch.testing.assert_close(logits(tuned, IDS), logits(peft_model, IDS), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(interpolate_into(work, base, tuned, 0.0), IDS), logits(base, IDS), rtol=0, atol=0)
    assert not torch.equal(logits(tuned, IDS), logits(base, IDS))


def test_pareto_front_is_the_set_of_undominated_points():
    pts = [[0.8, 300.0], [0.7, 200.0], [0.6, 150.0], [0.6, 250.0], [0.8, 310.0]]
    assert pareto_front(pts, [True, False]) == [True, True, True, False, False]
    assert pareto_front(pts, [True, True]) == [False, False, False, False, True]


@pytest.mark.parametrize(
    "module", ["sftlab.eval.tradeoff", "sftlab.sweep", "sftlab.data.mixing", "sftlab.train.stages"]
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def write_tiny_task(tmp_path, tokenizer):
    """A tiny base and tuned model folder, and an eval config with one task of each role."""
    base = build_tiny_llama(len(tokenizer), seed=0)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    tuned = perturbed(build_tiny_llama(len(tokenizer), seed=0), scale=0.2)
    tuned.save_pretrained(tmp_path / "tuned")
    tokenizer.save_pretrained(tmp_path / "tuned")
    rows = [{"sentence": f"a {'good' if i % 2 else 'bad'} film {i}", "label": i % 2} for i in range(12)]
    (tmp_path / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    cfg = {
        "eval": {
            "bootstrap_samples": 100,
            "tasks": [
                {"name": "cls", "kind": "classification", "path": str(tmp_path / "cls.jsonl"),
                 "prompt_template": "Review: {sentence}\nSentiment:", "label_map": {"0": " negative", "1": " positive"}},
                {"name": "text", "kind": "perplexity", "role": "versatility", "path": str(tmp_path / "text.txt"),
                 "max_tokens": 120, "seq_len": 16},
            ],
        }
    }  # fmt: skip
    (tmp_path / "eval.yaml").write_text(json.dumps(cfg))
    return tmp_path / "eval.yaml"


def test_interpolate_command_writes_table_plot_and_scorecards(tmp_path, tiny_tokenizer):
    config = write_tiny_task(tmp_path, tiny_tokenizer)
    out = tmp_path / "interp"
    code = main(["interpolate", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"),
                 "--alphas", "0,0.5,1", "--config", str(config), "--out", str(out)])  # fmt: skip
    assert code == 0
    for name in ("interpolation.md", "interpolation.json", "interpolation.png", "alpha=0.5/scorecard.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "interpolation.json").read_text())
    points = {p["name"]: p for p in summary["points"]}
    assert list(points) == ["alpha=0", "alpha=0.5", "alpha=1"] and summary["reference"] == "alpha=1"
    a0 = points["alpha=0"]["metrics"]
    assert a0["text.perplexity"]["vs_base"]["delta"] == 0 and a0["cls.accuracy"]["vs_base"]["delta"] == 0
    ppl = [points[n]["metrics"]["text.perplexity"]["value"] for n in points]
    assert ppl[0] != ppl[2]  # the tuned model is another model
    lo, hi = points["alpha=0.5"]["metrics"]["text.perplexity"]["ci95"]
    assert lo <= ppl[1] <= hi
    assert "Pareto front" in (out / "interpolation.md").read_text()


def test_interpolate_rejects_models_of_another_shape(tmp_path, tiny_tokenizer, capsys):
    config = write_tiny_task(tmp_path, tiny_tokenizer)
    build_tiny_llama(len(tiny_tokenizer), seed=0, hidden_size=48).save_pretrained(tmp_path / "other")
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    code = main(["interpolate", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "other"),
                 "--config", str(config)])  # fmt: skip
    assert code == 2 and "not the same architecture" in capsys.readouterr().err


def test_sweep_runs_a_grid_and_plots_every_run(tmp_path, tiny_tokenizer):
    from sftlab.sweep import run_sweep

    config = write_tiny_task(tmp_path, tiny_tokenizer)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"a good film number {i}"}) + "\n" for i in range(24)))
    run_cfg = json.loads(config.read_text())
    run_cfg.update(
        model={"name_or_path": str(tmp_path / "base")},
        data={"sources": [{"path": str(data), "format": "text"}], "cache_dir": str(tmp_path / "cache")},
        train={"max_steps": 2, "micro_batch_size": 4, "progress": False},
    )
    (tmp_path / "run.yaml").write_text(json.dumps(run_cfg))
    sweep = {
        "config": str(tmp_path / "run.yaml"),
        "out": str(tmp_path / "sweep"),
        "reference": "lr=0.01",
        "grid": {"train.lr": [0.01, 0.0]},
        "interpolate": [{"run": "lr=0.01", "alphas": [0.5]}],
    }
    (tmp_path / "sweep.yaml").write_text(json.dumps(sweep))
    summary = run_sweep(tmp_path / "sweep.yaml", progress=False)
    names = [p["name"] for p in summary["points"]]
    assert names == ["base", "lr=0.01", "lr=0.0", "lr=0.01 alpha=0.5"]
    assert (tmp_path / "sweep" / "tradeoff.png").is_file()
    by_name = {p["name"]: p for p in summary["points"]}
    # lr 0 trains nothing: the same scores as the base, item for item
    assert (
        by_name["lr=0.0"]["metrics"]["text.perplexity"]["value"]
        == by_name["base"]["metrics"]["text.perplexity"]["value"]
    )
    assert by_name["lr=0.0"]["metrics"]["text.perplexity"]["vs_base"]["delta"] == 0


@pytest.mark.parametrize("size", ["default", "quick"])
@pytest.mark.parametrize("task", ["sst2", "squad"])
def test_tradeoff_experiment_sweeps_are_valid(tmp_path, task, size):
    """examples/tradeoff/run.py writes one sweep per task; every run config in it is valid, replay counts give
    their shares, DMT expands to two stages, the selection points pick n of 2n records."""
    import importlib.util
    from pathlib import Path

    from sftlab.data.pipeline import unique_names
    from sftlab.sweep import expand_runs, load_sweep, run_config
    from sftlab.train.stages import is_staged, plan_stages

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("tradeoff_run", repo / "examples" / "tradeoff" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    sweep = load_sweep(run.write_sweep(task, size, tmp_path))
    sweep = type(sweep)(**{**sweep.__dict__, "config": str(repo / sweep.config)})
    cfgs = {r.name: run_config(sweep, r, []) for r in expand_runs(sweep)}
    n = run.SIZES[size][task]
    assert sweep.reference in cfgs and all(i.run in cfgs for i in sweep.interpolate)
    assert cfgs["full_ft"].data.sources[0].limit == n and cfgs["full_ft"].data.sources[1].count == 0
    assert cfgs["full_ft"].eval.base_cache == str(tmp_path / "base_scores")  # shared by both tasks' sweeps
    replay = cfgs["replay_25%"].data.sources[1].count
    assert replay / (n + replay) == pytest.approx(0.25, abs=0.01) and cfgs["lora_r16"].lora.enabled
    roles = {t.name: t.role for t in cfgs["full_ft"].eval.tasks}
    assert roles[{"sst2": "sst2_dev", "squad": "squad_dev"}[task]] == "specialty"
    assert sorted(roles.values()).count("specialty") == 1
    if size == "quick":
        assert set(cfgs) == set(run.QUICK_RUNS)
        return
    dmt = cfgs["dmt"]
    assert is_staged(dmt)
    stages = plan_stages(dmt, unique_names(dmt.data.sources), Path("unused"))
    assert [s.specs[-1].fraction for s in stages] == [None, 1 / 256]
    assert ("select_ifd" in cfgs) == (task == "squad")
    if task == "squad":
        for by in ("ifd", "random", "length_matched"):
            c = cfgs[f"select_{by}"]
            assert c.data.clean.select.by == by and c.data.clean.select.budget == n
            assert c.data.sources[0].limit == 2 * n
            # selection alone: no dedup or filter removes records before it (n of 2n, not n of fewer)
            assert c.data.clean.dedup.near == c.data.clean.dedup.exact == "none" and not c.data.clean.filter.enabled
