"""Every shared data set loads through auto-detection, renders, and is summarised by ``data inspect``.

Checked on the JSON output of ``data inspect`` (the interface other tools use): labels align with ids,
every kept record trains something, every trained run ends with the end-of-turn token, and for chat
data the number of trained runs equals the number of assistant turns of the source record.
"""

from __future__ import annotations

import argparse
import json

import pytest

from sftlab.data import inspect

SST2 = ["--prompt-template", "Review: {sentence}\nSentiment:", "--label-map", "0=negative,1=positive"]
# (path, expected format, tokenizer, template, extra args)
DATASETS = [
    ("sentiment/sst2/train.jsonl", "classification", "gpt2_hf", "plain", SST2),
    ("sentiment/sst2_glue/train.tsv", "classification", "gpt2_hf", "plain", SST2),
    ("qa/squad_v1.1/dev-v1.1.flat.part1.jsonl", "extraction", "gpt2_hf", "plain", []),
    ("instruction/alpaca_cherry_5_percent.jsonl", "alpaca", "mistral_7b_instruct_v0.2", "mistral", []),
    ("instruction/code_alpaca_2k.jsonl", "alpaca", "mistral_7b_instruct_v0.2", "mistral", []),
    (
        "instruction/alpaca_gpt4_en_demo_llamafactory.jsonl",
        "alpaca",
        "mistral_7b_instruct_v0.2",
        "mistral",
        [],
    ),
    (
        "instruction/llms_from_scratch_instruction-data.jsonl",
        "alpaca",
        "mistral_7b_instruct_v0.2",
        "mistral",
        [],
    ),
    ("multiturn/fastchat_dummy_conversation.json", "sharegpt", "mistral_7b_instruct_v0.2", "mistral", []),
    (
        "multiturn/fastchat_dummy_conversation.messages.jsonl",
        "messages",
        "mistral_7b_instruct_v0.2",
        "mistral",
        [],
    ),
    (
        "multiturn/glaive_toolcall_en_demo_llamafactory.json",
        "sharegpt",
        "mistral_7b_instruct_v0.2",
        "mistral",
        [],
    ),
    (
        "multiturn/hh-rlhf_harmless-base_test.messages.jsonl",
        "messages",
        "mistral_7b_instruct_v0.2",
        "mistral",
        [],
    ),
]
LIMIT, MAX_LEN = 300, 4096


def run_inspect(argv):
    parser = argparse.ArgumentParser()
    inspect.add_arguments(parser)
    return inspect.run(parser.parse_args(argv))


@pytest.mark.parametrize("rel,fmt,tok,template,extra", DATASETS, ids=[d[0].split("/")[-1] for d in DATASETS])
def test_shared_dataset_through_inspect(shared_data, capsys, rel, fmt, tok, template, extra):
    path = shared_data / rel
    code = run_inspect(
        [
            str(path),
            "--tokenizer",
            str(shared_data / "tokenizers" / tok),
            "--template",
            template,
            "--limit",
            str(LIMIT),
            "--max-seq-len",
            str(MAX_LEN),
            "--json",
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and f"records {LIMIT} in" in err and "tokens" in err and "trained" in err
    assert len(records) >= LIMIT * 0.9
    eot = 50256 if tok == "gpt2_hf" else 2
    for r in records:
        assert len(r["input_ids"]) == len(r["labels"]) == r["length"] and r["num_trained"] > 0
        runs = _runs(r["input_ids"], r["labels"])
        assert all(run[-1] == eot for run in runs), r["origin"]
        if fmt in ("classification", "extraction"):
            assert len(runs) == 1
    if fmt in ("messages", "sharegpt"):
        source = _source_records(path)
        for r in records:
            record = source[r["origin"].rsplit(":", 1)[1]]
            turns = record.get("messages") or record.get("conversations")
            assistants = sum(
                (t.get("role") or t.get("from")) in ("assistant", "gpt", "function_call") for t in turns
            )
            assert len(_runs(r["input_ids"], r["labels"])) == assistants, r["origin"]


def test_detected_formats(shared_data):
    from sftlab.config import SourceConfig
    from sftlab.data.formats import detect_format
    from sftlab.data.sources import load_source, read_row

    for rel, fmt, *_ in DATASETS:
        src = load_source(SourceConfig(path=str(shared_data / rel), limit=1))
        if src.kind == "json":
            row = read_row(src, src.dataset[:1], 0)
            columns = list(row)
        else:
            columns = src.columns
        assert detect_format(columns) == fmt, rel


def _runs(ids, labels):
    runs, prev = [], False
    for t, lab in zip(ids, labels):
        if lab != -100:
            assert lab == t
            if not prev:
                runs.append([])
            runs[-1].append(t)
        prev = lab != -100
    return runs


def _source_records(path):
    """line number (as text) -> record, for JSONL and for JSON lists (line of the record's opening brace)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return {str(i): json.loads(line) for i, line in enumerate(text.splitlines(), 1) if line.strip()}
    decoder, out, pos, line, counted = json.JSONDecoder(), {}, text.index("[") + 1, 1, 0
    while True:
        while text[pos] in " \t\r\n,":
            pos += 1
        if text[pos] == "]":
            return out
        line, counted = line + text.count("\n", counted, pos), pos
        out[str(line)], pos = decoder.raw_decode(text, pos)
