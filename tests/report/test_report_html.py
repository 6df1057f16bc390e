"""report.html of real small runs: every section there, every number the one in metrics.jsonl / scorecard.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from report_helpers import parse_report, read_metrics

from sftlab.cli import main
from sftlab.report.html import SECTIONS, write_report

TRAIN_KEYS = {"train loss": "loss", "lr": "lr", "tokens/s": "tokens_per_s", "grad norm": "grad_norm"}


def test_run_writes_a_report_with_every_section(real_runs):
    html = (real_runs.a / "report.html").read_text(encoding="utf-8")  # written by run_training itself
    rep = parse_report(html)
    assert rep.order == list(SECTIONS)
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    for name in ("status.json", "samples.jsonl", "tensorboard"):
        assert (real_runs.a / name).exists(), name


def test_report_numbers_equal_the_run_files(real_runs):
    run = real_runs.a
    rep = parse_report((run / "report.html").read_text(encoding="utf-8"))
    metrics = read_metrics(run)
    summary = json.loads((run / "summary.json").read_text())
    card = json.loads((run / "scorecard.json").read_text())

    # overview: the last logged train / eval loss, steps, status
    (row,) = rep.rows("overview", "run_a")
    cells = [c[0] for c in row]
    assert cells[1] == "done" and cells[2] == "6 / 6"
    assert float(row[3][1]) == metrics[-1]["loss"] == summary["train_loss"]
    assert float(row[4][1]) == metrics[-1]["eval_loss"] == summary["eval_loss"]

    # training curves: plotted values are the metrics.jsonl columns, step by step
    for label, key in TRAIN_KEYS.items():
        s = rep.series("training", label)
        assert s["x"] == [m["step"] for m in metrics] and s["y"] == [m[key] for m in metrics], label
    ev = rep.series("training", "eval loss")
    assert list(zip(ev["x"], ev["y"])) == [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert len(ev["x"]) == 2  # steps 3 and 6
    per_source = sorted(k for m in metrics for k in m if k.startswith("loss/"))
    for key in dict.fromkeys(per_source):
        s = rep.series("training", key)
        assert list(zip(s["x"], s["y"])) == [(m["step"], m[key]) for m in metrics if key in m]

    # scorecard: every metric's base, tuned, change [CI] and p
    rows = 0
    for t in card["tasks"]:
        for name, m in t["metrics"].items():
            (row,) = [r for r in rep.rows("scorecard", t["name"]) if r[2][0] == name]
            assert row[4][1] == repr(m["base"]) and row[5][1] == repr(m["model"])
            assert row[6][1] == repr([m["delta"], m["ci95"][0], m["ci95"][1]])
            assert row[7][1] == ("" if m["p_value"] is None else repr(m["p_value"]))
            assert row[9][0] == m["verdict"]
            rows += 1
    assert rows == 5  # sst: accuracy, macro_f1, ece; text: perplexity, kl_to_base
    acc, ppl = card["tasks"][0]["metrics"]["accuracy"], card["tasks"][1]["metrics"]["perplexity"]
    bar = rep.series("scorecard", "sst accuracy")["y"]
    assert bar == {
        "base": acc["base"],
        "model": acc["model"],
        "lo": acc["base"] + acc["ci95"][0],
        "hi": acc["base"] + acc["ci95"][1],
    }

    # specialty / versatility: the tuned model and its base at (perplexity, accuracy)
    point = rep.series("tradeoff", "run_a")["y"]
    assert (point["x"], point["y"]) == (ppl["model"], acc["model"])
    base = rep.series("tradeoff", "base")["y"]
    assert (base["x"], base["y"], base["base"]) == (ppl["base"], acc["base"], True)

    # data: per-source counts, trained-token shares, histograms over the records trained on
    data = json.loads((run / "data_report.json").read_text())["train"]
    total_trained = sum(s["trained_tokens"] for s in data["per_source"].values())
    for name, s in data["per_source"].items():
        source_row, mix_row = rep.rows("data", name)  # the sources table, then the mixture trained on
        assert [int(c[1]) for c in source_row[2:8]] == [
            s["records_in"],
            s["records_kept"],
            s["records_in"] - s["records_kept"],
            s["truncated"],
            s["total_tokens"],
            s["trained_tokens"],
        ]
        assert float(source_row[9][1]) == s["trained_tokens"] / total_trained
        mix = data["mixture"]["sources"][name]
        assert [float(c[1]) for c in mix_row[1:]] == [
            mix[k]
            for k in ("selected", "available", "repeats", "records_share", "tokens_share", "trained_tokens_share")
        ]
    hist = [s for s in rep.sections["data"]["series"] if s["x"] == data["histograms"]["length_edges"][:-1]]
    assert sorted(s["label"] for s in hist) == ["chat", "sst"]
    assert sum(sum(s["y"]) for s in hist) == summary["train_records"] == 32  # 40 records, 20% held out

    # samples and config
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and len(rep.sections["samples"]["rows"]) == 3  # header + 2
    text = rep.text("samples")
    for s in samples:
        assert s["reference"] in text and (not s["after"] or s["after"].strip()[:20] in text)
    assert (run / "config.yaml").read_text() in rep.text("config")


def test_compare_two_runs(real_runs, tmp_path):
    out = write_report([real_runs.a, real_runs.b], tmp_path / "compare.html")
    rep = parse_report(out.read_text(encoding="utf-8"))
    assert rep.order == list(SECTIONS)
    lr_row = rep.rows("config", "train.lr")[0]
    assert [c[0] for c in lr_row[1:]] == ["0.01", "0.003"]
    points = {s["label"]: s["y"] for s in rep.sections["tradeoff"]["series"]}
    assert sorted(points) == ["base", "run_a", "run_b"]
    for name in ("run_a", "run_b"):
        card = json.loads((real_runs.root / name / "scorecard.json").read_text())
        assert points[name]["y"] == card["tasks"][0]["metrics"]["accuracy"]["model"]
        train = rep.series("training", f"{name} train loss")
        assert train["y"] == [m["loss"] for m in read_metrics(real_runs.root / name)]
    (row,) = rep.rows("scorecard", "sst accuracy")  # same base: one base column, then (tuned, change) per run
    card_b = json.loads((real_runs.b / "scorecard.json").read_text())["tasks"][0]["metrics"]["accuracy"]
    assert row[1][1] == repr(card_b["base"]) and row[4][1] == repr(card_b["model"])


def test_report_of_a_stopped_run_with_a_cut_line(tmp_path, capsys):
    run = tmp_path / "stopped"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 100}}))
    lines = [{"step": s, "loss": 3.0 - s / 10, "lr": 1e-3, "tokens_per_s": 100.0, "grad_norm": 1.0} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": dead.pid, "host": os.uname().nodename}))
    assert main(["report", str(run)]) == 0
    assert f"-> {run / 'report.html'}" in capsys.readouterr().out
    rep = parse_report((run / "report.html").read_text(encoding="utf-8"))
    assert rep.order == list(SECTIONS)
    (row,) = rep.rows("overview", "stopped")
    assert row[1][0] == "stopped" and row[2][0] == "3 / 100"
    assert "1 unreadable line(s) in metrics.jsonl skipped" in rep.text("overview")
    assert rep.series("training", "train loss")["y"] == [2.9, 2.8, 2.7]
    assert "no scorecard.json" in rep.text("scorecard") and "no samples.jsonl" in rep.text("samples")


def test_report_failure_warns_instead_of_failing(tmp_path, capsys):
    from sftlab.train.artifacts import write_report_or_warn

    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.yaml").write_text("train: {}\n")
    (run / "summary.json").write_text('{"steps": ')  # cut short
    assert write_report_or_warn(run) is None
    out = capsys.readouterr().out
    assert "warning: report.html not written" in out and "summary.json: not valid JSON" in out
    assert not (run / "report.html").exists()


def test_report_command_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: run directory not found: {tmp_path / 'nope'}"]


def test_runs_lists_status_steps_losses_and_headline(real_runs, capsys):
    assert main(["runs", str(real_runs.root), "--json"]) == 0
    rows = {r["run"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(rows) == ["run_a", "run_b"]  # base/ is a model folder, not a run
    for name, row in rows.items():
        metrics = read_metrics(real_runs.root / name)
        card = json.loads((real_runs.root / name / "scorecard.json").read_text())
        assert (row["status"], row["step"], row["steps"]) == ("done", 6, 6)
        assert row["train_loss"] == metrics[-1]["loss"] and row["eval_loss"] == metrics[-1]["eval_loss"]
        assert [(h["task"], h["metric"], h["model"]) for h in row["scorecard"]] == [
            ("sst", "accuracy", card["tasks"][0]["metrics"]["accuracy"]["model"]),
            ("text", "perplexity", card["tasks"][1]["metrics"]["perplexity"]["model"]),
        ]
    assert main(["runs", str(real_runs.root)]) == 0
    table = capsys.readouterr().out
    assert "run_a" in table and "2 runs: 2 done, 0 not finished" in table


@pytest.mark.parametrize("module", ["sftlab.report.svg", "sftlab.eval.samples"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_a_stopped_run_writes_its_report(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from sftlab.config import load_config
    from sftlab.train.run import run_training
    from sftlab.train.runtime import TrainingStopped

    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i} + {i} =", "completion": f" {2 * i}"}) + "\n" for i in range(16))
    )
    scratch = (
        "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}"
    )
    cfg = load_config(
        None,
        [
            f"model.tokenizer={tiny_tokenizer_dir}",
            f"model.from_scratch={scratch}",
            f"data.sources.0.path={data}",
            "data.cache_dir=null",
            "train.max_steps=8",
            "train.micro_batch_size=4",
            "train.log_every_steps=1",
            "train.max_skipped_steps=2",
            "train.progress=false",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    monkeypatch.setenv("SFTLAB_FAULTS", "nan_from_step=3")
    with pytest.raises(TrainingStopped):
        run_training(cfg)
    rep = parse_report((tmp_path / "run" / "report.html").read_text(encoding="utf-8"))
    (row,) = rep.rows("overview", "run")
    assert row[1][0] == "stopped" and row[2][0].startswith("3 / 8")
    assert rep.series("training", "train loss")["x"] == [1, 2, 3]  # the skipped step is logged as NaN
    assert rep.series("training", "train loss")["y"][2] is None
