"""Every kind of source loads through ``datasets`` with the place of each record kept for error messages."""

from __future__ import annotations

import json

import pytest

from sftlab.config import DataConfig, SourceConfig
from sftlab.data.errors import DataError
from sftlab.data.pipeline import build_dataset
from sftlab.data.sources import load_source

ROWS = [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(5)]


def build(path, tok, **kw):
    cfg = DataConfig(sources=(SourceConfig(path=str(path), **kw),), template="plain", cache_dir=None)
    return build_dataset(cfg, tok, progress=False)


def test_jsonl_lines_blank_lines_and_limit(tmp_path, tiny_tokenizer):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n\n" + json.dumps(ROWS[2]) + "\n")
    ds, report = build(path, tiny_tokenizer)
    assert (
        ds["origin"] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:4"]
        and report.per_source["a"].format == "prompt_completion"
    )
    ds, _ = build(path, tiny_tokenizer, limit=2)
    assert len(ds) == 2


def test_json_list_data_key_and_json_lines_named_json(tmp_path, tiny_tokenizer):
    (tmp_path / "list.json").write_text(json.dumps(ROWS[:3], indent=2))
    ds, _ = build(tmp_path / "list.json", tiny_tokenizer)
    assert ds["origin"] == ["list.json:2", "list.json:6", "list.json:10"]
    (tmp_path / "data.json").write_text(json.dumps({"version": 1, "data": ROWS[:2]}))
    assert build(tmp_path / "data.json", tiny_tokenizer)[0]["origin"] == [
        "data.json:record 1",
        "data.json:record 2",
    ]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in ROWS[:2]))
    assert len(build(tmp_path / "lines.json", tiny_tokenizer)[0]) == 2


def test_csv_tsv_parquet_keep_text_as_text(tmp_path, tiny_tokenizer):
    import pandas as pd

    rows = [{"sentence": 'NA "quoted" text', "label": 1}, {"sentence": "null", "label": 0}]
    (tmp_path / "a.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows)
    )
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    for name in ("a.tsv", "a.csv", "a.parquet"):
        ds, report = build(tmp_path / name, tiny_tokenizer, label_map={"0": "neg", "1": "pos"})
        assert report.per_source["a"].format == "classification"
        texts = [tiny_tokenizer.decode(ids) for ids in ds["input_ids"]]
        assert (
            texts[0] == 'NA "quoted" text\nLabel: pos<|im_end|>' and texts[1] == "null\nLabel: neg<|im_end|>"
        )
        assert ds["origin"] == [f"{name}:row 1", f"{name}:row 2"]


def test_folder_of_files_and_mixed_folder(tmp_path, tiny_tokenizer):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "d" / "y.jsonl").write_text(json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]) + "\n")
    ds, report = build(tmp_path / "d", tiny_tokenizer)
    assert ds["origin"] == ["x.jsonl:1", "y.jsonl:1", "y.jsonl:2"] and report.per_source["d"].records_in == 3
    (tmp_path / "d" / "z.csv").write_text("prompt,completion\na,b\n")
    with pytest.raises(DataError, match="mixes file types"):
        build(tmp_path / "d", tiny_tokenizer)


def test_saved_dataset_and_split(tmp_path, tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": Dataset.from_list(ROWS[:2]), "test": Dataset.from_list(ROWS[2:])}).save_to_disk(
        str(tmp_path / "two")
    )
    assert len(build(tmp_path / "one", tiny_tokenizer)[0]) == 5
    ds, _ = build(tmp_path / "two", tiny_tokenizer, split="test")
    assert len(ds) == 3 and ds["origin"][0] == "two:row 1"
    with pytest.raises(DataError, match="split 'dev' not found"):
        build(tmp_path / "two", tiny_tokenizer, split="dev")


def test_hub_ids_go_to_load_dataset_with_subset_split_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = load_source(SourceConfig(path="org/data", subset="en", split="train[:10]", revision="abc", limit=3))
    assert calls == [
        (
            "org/data",
            {"name": "en", "split": "train[:10]", "revision": "abc", "streaming": False, "cache_dir": None},
        )
    ]
    assert len(src.dataset) == 3
    with pytest.raises(DataError, match="missing.jsonl: field 'path': file not found"):
        load_source(SourceConfig(path="missing.jsonl"))


def test_streaming_gives_the_same_records(tmp_path, tiny_tokenizer):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    streamed, report = build(path, tiny_tokenizer, streaming=True, limit=4)
    plain, _ = build(path, tiny_tokenizer, limit=4)
    assert streamed["input_ids"] == plain["input_ids"] and streamed["labels"] == plain["labels"]
    assert report.records_in == 4
