"""Staged runs: each stage trains on its own data and parameters from the right step; DMT's mixture; resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.config import ConfigError, DmtConfig, load_config
from sftlab.data.mixing import target_counts
from sftlab.train.run import run_training
from sftlab.train.stages import expand_dmt, plan_stages

SCRATCH = "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2}"


def write_sources(tmp_path, n=24):
    paths = {}
    for name, word in (("a", "red"), ("b", "blue"), ("c", "green")):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": f"a {word} fox number {i}"}) + "\n" for i in range(n)))
        paths[name] = p
    return paths


def staged_config(tmp_path, tok_dir, *extra):
    paths = write_sources(tmp_path)
    sources = ", ".join(f"{{path: {p}, format: text}}" for p in paths.values())
    return load_config(
        None,
        [
            f"model.tokenizer={tok_dir}",
            f"model.from_scratch={SCRATCH}",
            f"data.sources=[{sources}]",
            "data.mask=all",
            "data.group_by_length=false",
            "train.micro_batch_size=8",
            "train.log_every_steps=1",
            "train.lr=1e-2",
            "train.scheduler=constant",
            "train.progress=false",
            "stages=[{name: s1, sources: [a, c], max_steps: 3, select: {preset: attention_only}},"
            " {name: s2, sources: [b, c], max_steps: 2, lr: 5.0e-3, select: {preset: ffn_only}}]",
            f"output.dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *extra,
        ],
    )


def test_stages_switch_data_and_trainable_parameters_at_the_right_step(tmp_path, tiny_tokenizer_dir, monkeypatch):
    import sftlab.train.loop as loop

    calls = []  # per stage: (weights before, weights after, names of the sources trained on)
    original = loop.train

    def spy(cfg, model, tokenizer, dataset, *args, **kwargs):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = original(cfg, model, tokenizer, dataset, *args, **kwargs)
        calls.append((before, {n: p.detach().clone() for n, p in model.named_parameters()}, set(dataset["source"])))
        return result

    monkeypatch.setattr(loop, "train", spy)
    summary = run_training(staged_config(tmp_path, tiny_tokenizer_dir))
    assert summary["steps"] == 5 and [s["name"] for s in summary["stages"]] == ["s1", "s2"]
    (start, after1, data1), (after1_again, after2, data2) = calls
    assert all(torch.equal(after1[n], after1_again[n]) for n in after1)  # stage 2 starts where stage 1 ended
    assert (data1, data2) == ({"a", "c"}, {"b", "c"})
    assert {n for n in start if not torch.equal(start[n], after1[n])} == {n for n in start if ".self_attn." in n}
    assert {n for n in start if not torch.equal(after1[n], after2[n])} == {n for n in start if ".mlp." in n}

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"], r["stage_step"]) for r in lines] == [
        (1, "s1", 1), (2, "s1", 2), (3, "s1", 3), (4, "s2", 1), (5, "s2", 2)
    ]  # fmt: skip
    for r in lines:  # each stage's sources, and only those, are trained (8 of 48 records a step: both appear)
        seen = {k.split("/")[1] for k in r if k.startswith("loss/")}
        assert seen == ({"a", "c"} if r["stage"] == "s1" else {"b", "c"}), r
    assert [r["lr"] for r in lines] == [1e-2] * 3 + [5e-3] * 2
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert {k: v["selected"] for k, v in report["stages"]["s2"]["sources"].items()} == {"b": 24, "c": 24}


def test_dmt_expands_to_specialist_then_general_plus_k_specialist():
    s1, s2 = expand_dmt(DmtConfig(specialist=("sst2",)), ["sst2", "wiki", "code"])
    assert s1.sources == ("sst2",)
    assert s2.sources[:2] == ("wiki", "code") and s2.sources[2].fraction == 1 / 256
    cfg = load_config(None, ["data.sources=[{path: sst2.jsonl}, {path: wiki.jsonl}]", "dmt.specialist=[sst2]"])
    tmp = Path("unused")
    stages = plan_stages(cfg, ["sst2", "wiki"], tmp)
    assert [st.name for st in stages] == ["dmt1_specialist", "dmt2_general"]
    assert target_counts({"sst2": 6920, "wiki": 1000}, stages[1].specs, stages[1].mixture) == {"wiki": 1000, "sst2": 27}
    with pytest.raises(ConfigError, match="needs general data"):
        expand_dmt(DmtConfig(specialist=("sst2",)), ["sst2"])
    with pytest.raises(ConfigError, match="not both"):
        plan_stages(load_config(None, ["dmt.specialist=[a]", "stages=[{name: x}]"]), ["a", "b"], tmp)
    with pytest.raises(ConfigError, match="not in data.sources"):
        plan_stages(load_config(None, ["stages=[{sources: [zzz]}]"]), ["a"], tmp)


def test_resume_in_the_middle_of_stage_two_is_exact(tmp_path, tiny_tokenizer_dir):
    cfg = staged_config(tmp_path, tiny_tokenizer_dir, "train.save_every_steps=1", "train.keep_last=5")
    run_training(cfg)
    run = tmp_path / "run"
    straight = load_file(str(run / "final" / "model.safetensors"))
    straight_lines = (run / "metrics.jsonl").read_text().splitlines()
    # what a crash after the first checkpoint of stage 2 leaves on disk
    s2 = run / "stages" / "2_s2"
    (s2 / "done.json").unlink()
    (s2 / "model.safetensors").unlink()
    shutil.rmtree(run / "final")
    assert [p.name for p in sorted((s2 / "checkpoints").iterdir())] == ["step-000001"]
    s1_done = (run / "stages" / "1_s1" / "done.json").stat().st_mtime_ns
    summary = run_training(load_config(run / "config.yaml", ["train.resume=auto"]))
    assert summary["steps"] == 5
    assert (run / "stages" / "1_s1" / "done.json").stat().st_mtime_ns == s1_done  # stage 1 not trained again
    resumed_from = json.loads((s2 / "done.json").read_text())["result"]["resumed_from"]
    assert resumed_from.endswith("step-000001")  # stage 2 went on from its checkpoint
    resumed = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        json.loads(x)["loss"] for x in straight_lines
    ]


def test_resume_after_a_stage_without_kept_weights_is_a_clear_error(tmp_path, tiny_tokenizer_dir):
    run_training(staged_config(tmp_path, tiny_tokenizer_dir))
    (tmp_path / "run" / "stages" / "2_s2" / "done.json").unlink()
    with pytest.raises(ConfigError, match="weights were not kept"):
        run_training(load_config(tmp_path / "run" / "config.yaml", ["train.resume=auto"]))
