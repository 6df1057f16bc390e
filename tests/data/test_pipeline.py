"""build_dataset: output columns, counts that add up, the cache, parallel == serial, dataset warnings."""

from __future__ import annotations

import json

import pytest

from sftlab.config import DataConfig, SourceConfig
from sftlab.data import pipeline
from sftlab.data.pipeline import build_dataset

CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }
    for i in range(6)
]


@pytest.fixture()
def chat_file(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in CHATS) + "\n")
    return path


def config(*paths, **kw):
    kw.setdefault("cache_dir", None)
    return DataConfig(sources=tuple(SourceConfig(path=str(p)) for p in paths), **kw)


def test_columns_types_and_report(chat_file, tiny_tokenizer):
    ds, report = build_dataset(config(chat_file), tiny_tokenizer, progress=False)
    assert ds.column_names == ["input_ids", "labels", "length", "num_trained", "source", "origin"]
    row = ds[0]
    assert row["length"] == len(row["input_ids"]) == len(row["labels"])
    assert row["num_trained"] == sum(x != -100 for x in row["labels"]) and row["source"] == "chats"
    assert report.records_in == report.records_kept == 6 and not report.eot_warning
    assert report.total_tokens == sum(ds["length"]) and report.trained_tokens == sum(ds["num_trained"])
    assert report.length_min <= report.length_median <= report.length_p95 <= report.length_max
    assert json.loads(json.dumps(report.to_dict()))["records_kept"] == 6
    assert "6 in, 6 kept" in report.format()


def test_cache_hit_does_not_retokenise_and_any_change_does(chat_file, tiny_tokenizer, tmp_path, monkeypatch):
    cfg = config(chat_file, cache_dir=str(tmp_path / "cache"))
    skipped = tmp_path / "skipped.jsonl"
    first, report = build_dataset(cfg, tiny_tokenizer, progress=False, skipped_path=str(skipped))
    assert not report.from_cache and skipped.read_text() == ""

    def no_encoding(*a, **k):
        raise AssertionError("re-tokenised on a cache hit")

    monkeypatch.setattr(pipeline, "encode_batch", no_encoding)
    second, report2 = build_dataset(cfg, tiny_tokenizer, progress=False, skipped_path=str(skipped))
    assert (
        report2.from_cache
        and second["input_ids"] == first["input_ids"]
        and second["labels"] == first["labels"]
    )
    assert report2.records_kept == report.records_kept
    # Each input of the key re-tokenises: template, mask, max_seq_len, truncation, file content, options.
    changes = [dict(template="plain"), dict(mask="all"), dict(max_seq_len=7), dict(truncation="drop")]
    for change in changes:
        with pytest.raises(AssertionError, match="re-tokenised"):
            build_dataset(
                config(chat_file, cache_dir=cfg.cache_dir, **change), tiny_tokenizer, progress=False
            )
    with pytest.raises(AssertionError, match="re-tokenised"):
        build_dataset(
            cfg, tiny_tokenizer, progress=False, sources=(SourceConfig(path=str(chat_file), system="x"),)
        )
    chat_file.write_text(chat_file.read_text().replace("Answer 0", "Answer zero"))
    with pytest.raises(AssertionError, match="re-tokenised"):
        build_dataset(cfg, tiny_tokenizer, progress=False)


def test_cache_key_covers_the_tokenizer(
    chat_file, tiny_tokenizer, fresh_tiny_tokenizer, tmp_path, monkeypatch
):
    cfg = config(chat_file, cache_dir=str(tmp_path / "cache"))
    build_dataset(cfg, tiny_tokenizer, progress=False)
    assert build_dataset(cfg, fresh_tiny_tokenizer, progress=False)[1].from_cache  # same vocab, same key
    fresh_tiny_tokenizer.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    assert not build_dataset(cfg, fresh_tiny_tokenizer, progress=False)[1].from_cache


def test_removed_records_are_cached_too(tmp_path, tiny_tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps(CHATS[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"
    )
    cfg = config(path, cache_dir=str(tmp_path / "cache"), on_error="skip")
    for expect_cache in (False, True):
        skipped = tmp_path / f"skipped{expect_cache}.jsonl"
        _, report = build_dataset(cfg, tiny_tokenizer, progress=False, skipped_path=str(skipped))
        assert report.from_cache is expect_cache and report.skipped == {"no_assistant_turn": 1}
        assert json.loads(skipped.read_text())["origin"] == "c.jsonl:2"


def test_parallel_equals_serial(shared_data, gpt2_tokenizer):
    src = SourceConfig(
        path=str(shared_data / "sentiment/sst2/train.jsonl"),
        limit=3000,
        prompt_template="Review: {sentence}\nSentiment:",
        label_map={"0": "negative", "1": "positive"},
    )
    kw = dict(template="plain", cache_dir=None)
    serial, _ = build_dataset(DataConfig(sources=(src,), num_proc=1, **kw), gpt2_tokenizer, progress=False)
    parallel, report = build_dataset(
        DataConfig(sources=(src,), num_proc=2, **kw), gpt2_tokenizer, progress=False
    )
    assert parallel["input_ids"] == serial["input_ids"] and parallel["labels"] == serial["labels"]
    assert parallel["origin"][2999] == "train.jsonl:3000" and report.records_kept == 3000


def test_eot_warning_when_the_end_of_turn_is_not_a_token(chat_file, gpt2_tokenizer, tiny_tokenizer):
    _, report = build_dataset(config(chat_file, template="chatml"), gpt2_tokenizer, progress=False)
    assert "<|im_end|> is not a single token" in report.eot_warning and report.records_without_eot == 6
    _, report = build_dataset(config(chat_file, template="plain"), gpt2_tokenizer, progress=False)
    assert not report.eot_warning


def test_several_sources_have_their_own_counts(chat_file, tmp_path, tiny_tokenizer):
    other = tmp_path / "other" / "chats.jsonl"
    other.parent.mkdir()
    other.write_text(json.dumps(CHATS[0]) + "\n")
    ds, report = build_dataset(config(chat_file, other), tiny_tokenizer, progress=False)
    assert list(report.per_source) == ["chats", "chats_2"] and set(ds["source"]) == {"chats", "chats_2"}
    assert [s.records_kept for s in report.per_source.values()] == [6, 1] and len(ds) == 7


def test_nothing_left_is_an_error(tmp_path, tiny_tokenizer):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(pipeline.DataError, match="no records left"):
        build_dataset(config(path, on_error="skip"), tiny_tokenizer, progress=False)
