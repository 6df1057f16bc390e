"""End to end: config -> run directory; the saved model reloads with plain transformers and matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftlab.config import load_config
from sftlab.data.pipeline import build_dataset
from sftlab.data.render import resolve_chat_template
from sftlab.model.load import load_model, load_tokenizer
from sftlab.train.loop import train
from sftlab.train.run import run_training, save_final

REPO = Path(__file__).resolve().parents[1]
SCRATCH = ("{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
           "num_key_value_heads: 1}")


def chat_file(tmp_path: Path) -> Path:
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + {i}?"},
                      {"role": "assistant", "content": f"It is {2 * i}."}]}
        for i in range(24)
    ]
    p = tmp_path / "chat.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def cfg_for(tmp_path, tok_dir, *extra):
    return load_config(None, [
        f"model.tokenizer={tok_dir}", f"model.from_scratch={SCRATCH}", f"data.sources.0.path={chat_file(tmp_path)}",
        "data.max_seq_len=128", "train.max_steps=4", "train.lr=1e-2", "train.micro_batch_size=4",
        "train.progress=false", f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", *extra,
    ])


def test_saved_model_reloads_with_same_logits_and_template(tmp_path, tiny_tokenizer_dir):
    cfg = cfg_for(tmp_path, tiny_tokenizer_dir)
    tok = load_tokenizer(cfg.model)
    tok.chat_template = resolve_chat_template(cfg.data.template, tok)
    ds, _ = build_dataset(cfg.data, tok, progress=False)
    model = load_model(cfg.model, tok, seed=0)
    train(cfg, model, tok, ds, output_dir=tmp_path / "run")
    final = save_final(model, tok, tmp_path / "run" / "final")

    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    rtok = AutoTokenizer.from_pretrained(final)
    x = torch.tensor([ds[0]["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)
    first = json.loads(chat_file(tmp_path).read_text().splitlines()[0])["messages"]
    text = rtok.apply_chat_template(first, tokenize=False)
    assert rtok(text, add_special_tokens=False)["input_ids"] == ds[0]["input_ids"]
    assert reloaded.generation_config.eos_token_id == tok.eos_token_id


def test_run_training_writes_the_run_directory(tmp_path, tiny_tokenizer_dir):
    cfg = cfg_for(tmp_path, tiny_tokenizer_dir, "eval.split_ratio=0.25")
    summary = run_training(cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "data_report.json", "trainable_parameters.json",
                 "final/config.json", "final/model.safetensors", "final/tokenizer_config.json",
                 "final/generation_config.json"):
        assert (run / name).is_file(), name
    assert summary["steps"] == 4 and summary["eval_records"] == 6 and summary["train_records"] == 18
    assert summary["eval_loss"] is not None
    assert load_config(run / "config.yaml") == cfg  # the resolved config round-trips
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["eval_loss"] == pytest.approx(summary["eval_loss"])


EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_config_parses(path):
    cfg = load_config(path)
    assert cfg.data.sources and cfg.output.dir


SMALL = {  # example -> data overrides that make it run here (shared data where the example names a hub id)
    "sst2": [
        "data.sources.0.path={repo}/data/sst2/train.jsonl", "eval.tasks.0.path={repo}/data/sst2/dev.jsonl",
        "eval.tasks.0.limit=8", "eval.tasks.1.path={repo}/data/text/wikitext-2-raw-test.txt",
        "eval.tasks.1.max_tokens=600",
    ],
    "alpaca": ["data.sources.0.path={shared}/instruction/alpaca_cherry_5_percent.jsonl"],
    "multiturn": ["data.sources.0.path={shared}/multiturn/fastchat_dummy_conversation.json"],
    "squad": ["data.sources.0.path={shared}/qa/squad_v1.1/dev-v1.1.flat.part1.jsonl", "eval.tasks=[]"],
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_examples_run_a_few_steps(tmp_path, name, tiny_tokenizer, request):
    from sftlab.model.tiny import build_tiny_llama

    shared = request.getfixturevalue("shared_data") if any("{shared}" in o for o in SMALL[name]) else None
    base = tmp_path / "base"
    build_tiny_llama(len(tiny_tokenizer), seed=0).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    overrides = [
        f"model.name_or_path={base}", "train.max_steps=2", "train.progress=false", "data.sources.0.limit=40",
        f"output.dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", "train.precision=fp32",
        "eval.bootstrap_samples=50", *[o.format(shared=shared, repo=REPO) for o in SMALL[name]],
    ]
    summary = run_training(load_config(REPO / "examples" / f"{name}.yaml", overrides))
    assert summary["steps"] == 2 and Path(summary["final_dir"], "model.safetensors").is_file()
    if name == "sst2":
        card = json.loads(Path(summary["scorecard"]).read_text())
        assert [t["name"] for t in card["tasks"]] == ["sst2_dev", "wikitext2_test"]


def test_in_training_task_evals_go_to_metrics(tmp_path, tiny_tokenizer_dir):
    rows = [{"sentence": f"a {'good' if i % 2 else 'bad'} film number {i}", "label": i % 2} for i in range(16)]
    data = tmp_path / "sst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"model.tokenizer={tiny_tokenizer_dir}", f"model.from_scratch={SCRATCH}", f"data.sources.0.path={data}",
        "data.sources.0.format=classification", "data.sources.0.prompt_template='Review: {sentence}\\nSentiment:'",
        "data.sources.0.label_map={'0': negative, '1': positive}", "data.template=plain", "train.max_steps=4",
        "train.micro_batch_size=4", "train.progress=false", f"output.dir={tmp_path / 'run'}", "data.cache_dir=null",
        "eval.every_steps=2", "eval.tasks.0.name=sst", f"eval.tasks.0.path={data}",
        "eval.tasks.0.prompt_template=Review: {sentence}\\nSentiment:",
        "eval.tasks.0.label_map={'0': ' negative', '1': ' positive'}", "eval.compare_base=false",
    ])
    run_training(cfg)
    lines = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert 0.0 <= lines[2]["eval/sst/accuracy"] <= 1.0
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    assert card["tasks"][0]["metrics"]["accuracy"]["model"] is not None
