"""Scorecard end to end on tiny models: layout, pairing, data hashes, JSON, table, and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import json

import pytest
import yaml
from rich.console import Console

from sftlab.config import TaskConfig
from sftlab.eval import cli as eval_cli
from sftlab.eval.scorecard import evaluate_model, flatten_scorecard, format_scorecard, write_scorecard
from sftlab.model.tiny import build_tiny_llama

SENTENCES = ["a gorgeous film", "dull and lifeless", "funny and moving", "a waste of time", "the beast"] * 4


@pytest.fixture()
def task_files(tmp_path):
    cls = tmp_path / "cls.jsonl"
    cls.write_text(
        "".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(SENTENCES))
    )
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(json.dumps({"question": s, "answers": {"text": ["Paris"]}}) + "\n" for s in SENTENCES[:6])
    )
    text = tmp_path / "general.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. What is the capital of France? " * 20)
    return [
        TaskConfig(
            name="sent",
            path=str(cls),
            prompt_template="Review: {sentence}\nSentiment:",
            label_map={"0": " negative", "1": " positive"},
        ),
        TaskConfig(
            name="qa",
            kind="generation",
            role="versatility",
            path=str(qa),
            prompt_template="Question: {question}\nAnswer:",
            max_new_tokens=4,
        ),
        TaskConfig(
            name="ppl", kind="perplexity", role="versatility", path=str(text), seq_len=16, max_tokens=160
        ),
    ]


def test_scorecard_model_vs_base(task_files, tiny_model, tiny_tokenizer, tmp_path):
    base = build_tiny_llama(len(tiny_tokenizer), seed=1)
    card = evaluate_model(
        tiny_model, tiny_tokenizer, task_files, base_model=base, bootstrap_samples=200, progress=False
    )
    sent, qa, ppl = card["tasks"]
    assert card["has_base"] and [t["name"] for t in card["tasks"]] == ["sent", "qa", "ppl"]
    assert sent["data_sha256"] == hashlib.sha256(open(task_files[0].path, "rb").read()).hexdigest()
    assert sent["n_items"] == 20 and qa["n_items"] == 6 and ppl["n_items"] == 10
    acc = sent["metrics"]["accuracy"]
    assert acc["test"] == "mcnemar_exact" and acc["n"] == 20
    assert acc["delta"] == pytest.approx(acc["model"] - acc["base"])
    assert acc["ci95"][0] <= acc["delta"] <= acc["ci95"][1]
    assert set(sent["metrics"]) == {"accuracy", "macro_f1", "ece"} and set(qa["metrics"]) == {
        "exact_match",
        "f1",
    }
    assert ppl["headline"] == ["perplexity", "kl_to_base"]
    assert ppl["metrics"]["perplexity"]["higher_is_better"] is False
    assert ppl["metrics"]["kl_to_base"]["model"] > 0  # two different random models
    assert ppl["extras"]["cross_entropy_to_base"] > ppl["metrics"]["kl_to_base"]["model"]
    assert set(card["summary"]) == {"specialty", "versatility"}
    path = write_scorecard(card, tmp_path / "out" / "scorecard.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(card))
    rows = format_scorecard(card).row_count
    assert rows == sum(len(t["metrics"]) for t in card["tasks"])
    assert flatten_scorecard(card)["eval/sent/accuracy"] == acc["model"]


def test_scorecard_against_itself_shows_no_change(task_files, tiny_model, tiny_tokenizer):
    card = evaluate_model(
        tiny_model, tiny_tokenizer, task_files, base_model=tiny_model, bootstrap_samples=100, progress=False
    )
    for task in card["tasks"]:
        for name, m in task["metrics"].items():
            assert m["delta"] == 0.0, (task["name"], name)
            assert m["verdict"] in ("no significant change", "n/a")
    assert card["tasks"][2]["metrics"]["kl_to_base"]["model"] == 0.0


def test_scorecard_without_base(task_files, tiny_model, tiny_tokenizer):
    card = evaluate_model(tiny_model, tiny_tokenizer, task_files[:1], progress=False)
    m = card["tasks"][0]["metrics"]["accuracy"]
    assert m["base"] is None and m["verdict"] is None and not card["has_base"]
    buf = io.StringIO()
    Console(width=150, file=buf).print(format_scorecard(card))  # renders without a base
    assert "accuracy" in buf.getvalue()


def test_cli_writes_scorecard(task_files, tiny_model, tiny_tokenizer, tmp_path, capsys):
    model_dir, base_dir = tmp_path / "model", tmp_path / "base"
    for d, m in ((model_dir, tiny_model), (base_dir, build_tiny_llama(len(tiny_tokenizer), seed=1))):
        m.save_pretrained(d)
        tiny_tokenizer.save_pretrained(d)
    config = tmp_path / "run.yaml"
    keys = (
        "name",
        "kind",
        "role",
        "path",
        "prompt_template",
        "label_map",
        "max_new_tokens",
        "seq_len",
        "max_tokens",
    )
    tasks = [{k: getattr(t, k) for k in keys} for t in task_files]
    config.write_text(yaml.safe_dump({"eval": {"tasks": tasks, "bootstrap_samples": 100}}))
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    out = tmp_path / "card" / "scorecard.json"
    argv = f"--model {model_dir} --base {base_dir} --config {config} --out {out} "
    argv += " --set eval.tasks.1.max_new_tokens=2"
    args = parser.parse_args(argv.split())
    assert eval_cli.run(args) == 0
    card = json.loads(out.read_text())
    assert card["model"] == str(model_dir) and card["has_base"]
    assert [t["name"] for t in card["tasks"]] == ["sent", "qa", "ppl"]
    assert "scorecard ->" in capsys.readouterr().out
