"""Corrupted inputs: a specific error with file and line (default), or a counted skip; counts add up."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sftlab.config import DataConfig, SourceConfig
from sftlab.data.errors import DataError
from sftlab.data.pipeline import build_dataset


def msg(role, content):
    return {"role": role, "content": content}


GOOD = json.dumps({"messages": [msg("user", "What is the capital of France?"), msg("assistant", "Paris.")]})
BIG = "word " * 200_000  # a 1 MB reply
# (line, reason, text the error must contain)
BAD = [
    (b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assis', "invalid_json", "not valid JSON"),
    (
        json.dumps({"messages": [msg("user", 5), msg("assistant", "x")]}).encode(),
        "wrong_type",
        "messages[0].content",
    ),
    (json.dumps({"messages": "hello"}).encode(), "wrong_type", "expected a list of messages"),
    (json.dumps({"conversation": []}).encode(), "missing_field", "field 'messages': missing"),
    (
        json.dumps({"messages": [msg("user", "Hi"), msg("assistant", "  \n")]}).encode(),
        "empty_output",
        "empty",
    ),
    (json.dumps({"messages": [msg("user", "Hi")]}).encode(), "no_assistant_turn", "no assistant turn"),
    (json.dumps({"messages": [msg("user", "Hi"), msg("robot", "beep")]}).encode(), "unknown_role", "'robot'"),
    (
        json.dumps({"messages": [msg("user", "a"), msg("user", "b"), msg("assistant", "c")]}).encode(),
        "role_order",
        "two user turns in a row",
    ),
    (
        b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}',
        "not_utf8",
        "not valid UTF-8",
    ),
    (b"[1, 2, 3]", "not_an_object", "must be a JSON object"),
]


def config(path, on_error="raise", **kw):
    return DataConfig(
        sources=(SourceConfig(path=str(path)),), on_error=on_error, max_seq_len=256, cache_dir=None, **kw
    )


@pytest.mark.parametrize("line,reason,text", BAD, ids=[b[1] for b in BAD])
def test_default_stops_with_file_line_field_and_fix(tmp_path, tiny_tokenizer, line, reason, text):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\n" + line + b"\n" + GOOD.encode() + b"\n")
    with pytest.raises(DataError) as e:
        build_dataset(config(path), tiny_tokenizer, progress=False)
    assert e.value.reason == reason
    message = str(e.value)
    assert message.startswith("bad.jsonl:3: "), message  # line 3: blank lines count as lines
    assert text in message and "fix:" in message and "on_error: skip" in message


def test_skip_counts_every_reason_and_writes_the_skipped_file(tmp_path, tiny_tokenizer):
    path = tmp_path / "mixed.jsonl"
    big = json.dumps({"messages": [msg("user", "Write a lot."), msg("assistant", BIG)]}).encode()
    lines = [GOOD.encode()] + [b[0] for b in BAD] + [big, GOOD.encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert len(big) > 1_000_000
    skipped = tmp_path / "out" / "skipped.jsonl"
    ds, report = build_dataset(
        config(path, "skip"), tiny_tokenizer, skipped_path=str(skipped), progress=False
    )
    assert report.records_in == len(lines) == 13
    assert report.records_kept == len(ds) == 2
    assert report.skipped == dict(Counter(b[1] for b in BAD)) and report.skipped["wrong_type"] == 2
    # The 1 MB reply is cut by max_seq_len; a reply without its end-of-turn is not trained: nothing left.
    assert report.dropped_empty_mask == 1
    assert report.records_in == report.records_kept + sum(report.skipped.values()) + report.dropped_empty_mask
    rows = [json.loads(line) for line in skipped.read_text().splitlines()]
    assert [r["origin"] for r in rows] == [f"mixed.jsonl:{i}" for i in range(2, 13)]
    assert [r["reason"] for r in rows] == [b[1] for b in BAD] + ["empty_mask"]
    assert rows[0]["record"].startswith('{"messages"') and rows[1]["record"]["messages"][0]["content"] == 5
    assert all(r["error"] for r in rows)


def test_huge_record_with_drop_and_truncate_left(tmp_path, tiny_tokenizer, trained_runs):
    path = tmp_path / "big.jsonl"
    big_prompt = json.dumps({"messages": [msg("user", BIG), msg("assistant", "Short answer.")]})
    path.write_text(big_prompt + "\n" + GOOD + "\n")
    _, report = build_dataset(config(path, truncation="drop"), tiny_tokenizer, progress=False)
    assert (report.dropped_too_long, report.records_kept) == (1, 1)
    assert "big.jsonl:1" in report.examples_removed[0]["error"]
    ds, report = build_dataset(config(path, truncation="truncate_left"), tiny_tokenizer, progress=False)
    assert report.truncated == 1 and ds[0]["length"] == 256
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trained_runs(ds[0]["input_ids"], ds[0]["labels"]) == [
        tiny_tokenizer.encode("Short answer.") + [im_end]
    ]


def test_broken_json_document_names_the_line(tmp_path, tiny_tokenizer):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n  {"text": "c"}\n]\n')
    with pytest.raises(DataError, match=r"list.json:4: not valid JSON.*convert it to JSON lines"):
        build_dataset(config(path, "skip"), tiny_tokenizer, progress=False)


def test_errors_raised_in_worker_processes_arrive_intact(tmp_path, tiny_tokenizer):
    """With num_proc=2 the error raised in a worker process arrives intact (reason, origin, fix)."""
    path = tmp_path / "many.jsonl"
    lines = [GOOD] * 3000 + [json.dumps({"messages": [msg("user", "Hi")]})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        build_dataset(config(path, num_proc=2), tiny_tokenizer, progress=False)
    assert e.value.reason == "no_assistant_turn" and e.value.origin == "many.jsonl:3001"
