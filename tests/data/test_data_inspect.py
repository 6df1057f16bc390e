"""``sftlab data inspect``: highlighted examples + summary; ``--json`` is pure JSON lines on stdout."""

from __future__ import annotations

import argparse
import json

import pytest

from sftlab.data import inspect
from sftlab.data.errors import DataError


def run(argv):
    parser = argparse.ArgumentParser()
    inspect.add_arguments(parser)
    return inspect.run(parser.parse_args(argv))


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "Bye"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_human_output_brackets_trained_spans(data_file, tiny_tokenizer_dir, capsys):
    assert run([str(data_file), "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\n[[Hello!<|im_end|>]]\n" in out
    assert "--- chat.jsonl:1 (" in out and "records 2 in, 1 kept (removed: no_assistant_turn 1" in out
    assert "chat.jsonl:2" in out  # the removed record is named


def test_json_output_is_only_json_lines(data_file, tiny_tokenizer_dir, tiny_tokenizer, capsys):
    assert run([str(data_file), "--tokenizer", str(tiny_tokenizer_dir), "--json", "--mask", "all"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2  # under "all" a user-only record trains too
    record = json.loads(lines[0])
    assert record["labels"] == record["input_ids"]  # mask all
    assert record["text"] == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert record["input_ids"] == tiny_tokenizer(record["text"], add_special_tokens=False)["input_ids"]
    assert "records 2 in, 2 kept" in err


def test_options_reach_the_conversion(tmp_path, tiny_tokenizer_dir, capsys):
    path = tmp_path / "sst.jsonl"
    path.write_text(json.dumps({"sentence": "a gorgeous film", "label": 1}) + "\n")
    run(
        [
            str(path),
            "--tokenizer",
            str(tiny_tokenizer_dir),
            "--template",
            "plain",
            "--json",
            "--prompt-template",
            "Review: {sentence}\nSentiment:",
            "--label-map",
            '{"1": "positive"}',
        ]
    )
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "Review: a gorgeous film\nSentiment: positive<|im_end|>"
    assert inspect.parse_mapping("0=negative, 1=positive", "x") == {"0": "negative", "1": "positive"}


def test_errors(data_file, tiny_tokenizer_dir):
    with pytest.raises(DataError, match="--tokenizer"):
        run([str(data_file)])
    with pytest.raises(DataError, match=r"chat.jsonl:2.*no assistant turn"):
        run([str(data_file), "--tokenizer", str(tiny_tokenizer_dir), "--on-error", "raise"])
