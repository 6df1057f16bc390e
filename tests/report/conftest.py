"""Real small runs for the report tests: a saved tiny base, two short fine-tuning runs with a scorecard.

``runs.a``: 6 steps, two sources (classification + chat), held-out split (eval loss, samples), a
classification task (specialty) and a perplexity task (versatility) scored against the base, TensorBoard on.
``runs.b``: the same at another learning rate, no tracker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

SENTENCES = [{"sentence": f"a {'good' if i % 2 else 'bad'} film, number {i}", "label": i % 2} for i in range(24)]
CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}."},
        ]
    }
    for i in range(16)
]
TEXT = "The quick brown fox jumps over the lazy dog. What is the capital of France? It is Paris.\n" * 12


@dataclass
class Runs:
    root: Path
    a: Path
    b: Path
    base: Path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory, tiny_tokenizer) -> Runs:
    from sftlab.config import load_config
    from sftlab.model.tiny import build_tiny_llama
    from sftlab.train.run import run_training

    root = tmp_path_factory.mktemp("report_runs")
    base = root / "base"
    build_tiny_llama(len(tiny_tokenizer), seed=0).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    sst = _write_jsonl(root / "sst.jsonl", SENTENCES)
    chat = _write_jsonl(root / "chat.jsonl", CHAT)
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")

    def run(name: str, *extra: str) -> Path:
        cfg = load_config(
            None,
            [
                f"model.name_or_path={base}",
                f"data.sources.0.path={sst}",
                "data.sources.0.name=sst",
                "data.sources.0.format=classification",
                "data.sources.0.prompt_template='Review: {sentence}\\nSentiment:'",
                "data.sources.0.label_map={'0': negative, '1': positive}",
                f"data.sources.1.path={chat}",
                "data.sources.1.name=chat",
                "data.max_seq_len=96",
                "data.cache_dir=null",
                "train.max_steps=6",
                "train.micro_batch_size=4",
                "train.log_every_steps=2",
                "train.eval_every_steps=3",
                "train.progress=false",
                "eval.split_ratio=0.2",
                "eval.samples=2",
                "eval.sample_max_new_tokens=8",
                "eval.bootstrap_samples=100",
                "eval.tasks.0.name=sst",
                f"eval.tasks.0.path={sst}",
                "eval.tasks.0.prompt_template=Review: {sentence}\\nSentiment:",
                "eval.tasks.0.label_map={'0': ' negative', '1': ' positive'}",
                "eval.tasks.1.name=text",
                "eval.tasks.1.kind=perplexity",
                "eval.tasks.1.role=versatility",
                f"eval.tasks.1.path={text}",
                "eval.tasks.1.max_tokens=400",
                "eval.tasks.1.seq_len=64",
                f"output.dir={root / name}",
                *extra,
            ],
        )
        run_training(cfg)
        return root / name

    return Runs(
        root=root,
        a=run("run_a", "train.lr=1e-2", "train.report_to=[tensorboard]"),
        b=run("run_b", "train.lr=3e-3"),
        base=base,
    )
