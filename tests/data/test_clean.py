"""The cleaning pass (data/clean): every operator on crafted records, the counting invariant per source, the
pipeline step, ``sftlab data clean``, and the shared Alpaca / SQuAD data."""

from __future__ import annotations

import doctest
import importlib
import json
import random

import numpy as np
import pytest

from sftlab.config import (
    CleanConfig,
    DataConfig,
    DataSelectConfig,
    DecontaminateConfig,
    DedupConfig,
    EvalSetConfig,
    FilterConfig,
    SourceConfig,
)
from sftlab.data.clean import Records, clean_records
from sftlab.data.clean.decontaminate import EvalSet, load_eval_set
from sftlab.data.clean.dedup import UnionFind, exact_duplicates, near_duplicates
from sftlab.data.clean.filters import check_record
from sftlab.data.clean.select import build_ifd_rows, score_records, start_ids
from sftlab.data.clean.text import Vocab, encode_texts
from sftlab.data.errors import DataError

WORDS = [f"word{i}" for i in range(3000)]
OFF = CleanConfig(
    dedup=DedupConfig(exact="none", near="none"), filter=FilterConfig(enabled=False)
)  # every operator off: tests turn on one at a time


def text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def records_of(*pairs, source="s") -> Records:
    recs = Records(source_names=[source])
    for i, (prompt, response) in enumerate(pairs):
        recs.add(f"{source}.jsonl:{i + 1}", source, i, prompt, response)
    return recs


@pytest.fixture()
def one_thread():
    """Tiny models run no faster on more threads, and far slower when the cores are busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def removed_reasons(result) -> dict[int, str]:
    return {i: info["reason"] for i, info in result.removed.items()}


@pytest.mark.parametrize("name", ["text", "filters", "records", "decontaminate", "select", "report"])
def test_docstring_examples(name):
    module = importlib.import_module(f"sftlab.data.clean.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------ duplicates


def test_exact_duplicates_ignore_case_space_punctuation_and_prompt_mode():
    recs = records_of(
        ("What is 2 + 2?", "Four."),
        ("what  is 2+2", "four"),  # same after normalisation
        ("What is 2 = 2?", "Four."),  # a symbol differs: not the same
        ("What is 2 + 2?", "It is four."),  # same prompt only
        ("", "Lone text."),
        ("", "Other text."),  # empty prompts are no duplicates of each other
    )
    conv = clean_records(recs, CleanConfig(dedup=DedupConfig(exact="conversation", near="none"), filter=OFF.filter))
    assert removed_reasons(conv) == {1: "exact_duplicate"}
    assert conv.removed[1]["duplicate_of"] == "s.jsonl:1"
    prompt = clean_records(recs, CleanConfig(dedup=DedupConfig(exact="prompt", near="none"), filter=OFF.filter))
    assert removed_reasons(prompt) == {1: "exact_duplicate", 3: "exact_duplicate"}
    assert prompt.report.duplicate_clusters["exact"] == {3: 1}


def test_near_duplicates_differing_by_a_few_words_are_caught_distinct_equal_length_kept():
    base = text(120, 0).split()
    variant = list(base)
    for pos in (20, 60, 100):  # three words replaced
        variant[pos] = "changed"
    others = [text(120, seed) for seed in range(1, 40)]  # distinct records, all of exactly 120 words
    recs = records_of(("Write.", " ".join(base)), *[("Write.", o) for o in others], ("Write.", " ".join(variant)))
    result = clean_records(recs, CleanConfig(dedup=DedupConfig(exact="none", near="conversation"), filter=OFF.filter))
    last = len(recs) - 1
    assert removed_reasons(result) == {last: "near_duplicate"}
    info = result.removed[last]
    assert info["duplicate_of"] == "s.jsonl:1" and 0.7 <= info["similarity"] < 1
    assert result.report.duplicate_clusters["near"] == {2: 1}
    assert result.report.near_dedup["verified_pairs"] == 1


def test_near_duplicate_clusters_are_transitive_and_keep_the_first():
    a = text(200, 7).split()
    b = list(a)
    b[50] = "x1"
    c = list(b)
    c[150] = "x2"  # c is near b; and near a too (two edits)
    d = text(200, 8)
    w = encode_texts([" ".join(a), d, " ".join(c), " ".join(b)], Vocab())
    res = near_duplicates(w, np.ones(4, dtype=bool), threshold=0.7)
    assert res.duplicate_of == {2: 0, 3: 0} and res.cluster_sizes == {3: 1}
    uf = UnionFind(5)
    uf.union(4, 2)
    uf.union(3, 4)
    uf.union(1, 3)
    assert [uf.find(i) for i in range(5)] == [0, 1, 1, 1, 1]


def test_exact_duplicates_skip_records_already_removed():
    w = encode_texts(["a b", "a b", "a b"], Vocab())
    assert exact_duplicates(w, np.array([False, True, True])) == {2: 1}


# ------------------------------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    "prompt, response, cfg, reason",
    [
        ("Say hi.", "   ", {}, "empty_response"),
        ("Say hi.", "hi", {"min_response_words": 2}, "short_response"),
        ("Say hi.", "hi " * 50, {"max_response_words": 10, "max_top_ngram_share": (1, 1, 1)}, "long_response"),
        ("Name a colour please", "Name a colour please. Red.", {}, "prompt_echo"),
        ("Sing.", "la la la la\nthe same line here\nthe same line here\nthe same line here", {}, "duplicate_lines"),
        ("Talk.", "I am sorry. " * 30, {}, "repeated_ngrams"),
        ("Hi.", "Hello\x01 there", {}, "nonprintable"),
        ("Hi.", "Hello \ufffd there", {}, "nonprintable"),
    ],
)
def test_each_filter_catches_its_case(prompt, response, cfg, reason):
    hit = check_record(prompt, response, FilterConfig(**cfg))
    assert hit is not None and hit.reason == reason, hit


@pytest.mark.parametrize(
    "prompt, response",
    [
        ("Add two numbers in Python.", "# Add two numbers in Python.\ndef add(a, b):\n    return a + b\n" * 1),
        ("Write code.", "if x:\n    return 1\n}\n}\n}\nelse:\n    return 2\n"),  # short repeated lines not counted
        ("What is the capital of France?", "Paris"),
        (
            "Sing a song.",
            "Verse one about the sea\nChorus we sing along\nVerse two about the sky\nChorus we sing along",
        ),
    ],
)
def test_filters_keep_good_records(prompt, response):
    assert check_record(prompt, response, FilterConfig()) is None


def test_language_filter():
    pytest.importorskip("py3langid")
    cfg = FilterConfig(languages=("en",))
    assert check_record("Hi.", "Ceci est une longue phrase écrite entièrement en français.", cfg).reason == "language"
    assert check_record("Hi.", "This is a long sentence written entirely in English.", cfg) is None
    assert check_record("Hi.", "Oui.", cfg) is None  # too short to tell: kept


# ------------------------------------------------------------------------------------------ decontamination


def test_decontamination_hit_and_miss():
    item = text(40, 100)
    item_words = item.split()
    eval_set = EvalSet("evalset", "eval.jsonl", ["eval.jsonl:1", "eval.jsonl:2"], [item, text(40, 101)])
    recs = records_of(
        ("Repeat:", f"{text(10, 1)} {item.upper()}!"),  # the whole item, case and punctuation changed
        ("Some", " ".join(item_words[5:18]) + " " + text(20, 2)),  # one shared 13-gram
        ("Some", " ".join(item_words[0:7]) + " " + text(30, 3)),  # a 7-word phrase only: kept
        ("Other", text(40, 4)),
    )
    cfg = CleanConfig(dedup=OFF.dedup, filter=OFF.filter, decontaminate=DecontaminateConfig())
    result = clean_records(recs, cfg, eval_sets=[eval_set])
    assert removed_reasons(result) == {0: "contaminated", 1: "contaminated"}
    assert result.removed[0]["eval_item"] == "eval.jsonl:1" and result.removed[0]["coverage"] == 1.0
    assert result.removed[1]["coverage"] < 0.5  # caught by the 13-gram, not by coverage
    (rep,) = result.report.contamination
    assert (rep["items"], rep["items_hit"], rep["records_removed"]) == (2, 1, 2)
    no_long = CleanConfig(dedup=OFF.dedup, filter=OFF.filter, decontaminate=DecontaminateConfig(long_ngram=0))
    assert removed_reasons(clean_records(recs, no_long, eval_sets=[eval_set])) == {0: "contaminated"}


def test_chunked_passes_equal_whole_passes():
    from sftlab.data.clean.decontaminate import find_contamination
    from sftlab.data.clean.text import shingle_sets, text_fingerprints

    texts = [text(random.Random(i).randint(0, 30), i) for i in range(200)]
    vocab = Vocab()
    w = encode_texts(texts + [texts[5], " ".join(texts[7].split()[3:20])], vocab)
    small, whole = shingle_sets(w, 5, chunk_words=37), shingle_sets(w, 5)
    assert np.array_equal(small.values, whole.values) and np.array_equal(small.offsets, whole.offsets)
    assert np.array_equal(text_fingerprints(w, chunk_words=37), text_fingerprints(w))
    items = encode_texts([texts[7], texts[9]], vocab)
    keep = np.ones(len(w), dtype=bool)
    found = find_contamination(w, keep, items, DecontaminateConfig(), chunk_words=37)
    assert found[0] == find_contamination(w, keep, items, DecontaminateConfig())[0] and 7 in found[0]


def test_eval_set_file_fields_and_errors(tmp_path):
    path = tmp_path / "squad.jsonl"
    rows = [{"id": "q1", "context": "ctx one", "question": "why", "answers": {"text": ["because"]}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_eval_set(EvalSetConfig(path=str(path))).texts == ["q1\nctx one\nwhy\nbecause"]
    assert load_eval_set(EvalSetConfig(path=str(path), fields=("context",))).texts == ["ctx one"]
    with pytest.raises(DataError, match="field 'title'"):
        load_eval_set(EvalSetConfig(path=str(path), fields=("title",)))


# ------------------------------------------------------------------------------------------ selection


def test_ifd_matches_an_independent_computation_and_orders_the_selection(tiny_model, tiny_tokenizer, one_thread):
    import torch

    prompts = ["What is the capital of France?", "Review: a gorgeous film. Sentiment:", "Hello!", "def add(a, b):"]
    responses = ["The capital of France is Paris.", " positive", "How can I help you today?", "    return a + b"]
    scores = score_records(tiny_model, tiny_tokenizer, prompts, responses, batch_size=3)
    one_by_one = score_records(tiny_model, tiny_tokenizer, prompts, responses, batch_size=1)
    np.testing.assert_allclose(scores.ifd, one_by_one.ifd, rtol=1e-6)  # padding changes nothing
    start = start_ids(tiny_tokenizer)
    reference = []
    for p, r in zip(prompts, responses):
        p_ids = tiny_tokenizer(p + "\n", add_special_tokens=False)["input_ids"]
        r_ids = tiny_tokenizer(r, add_special_tokens=False)["input_ids"]
        losses = []
        for context in (start + p_ids, start):
            ids = torch.tensor([context + r_ids])
            labels = torch.tensor([[-100] * len(context) + r_ids])
            with torch.no_grad():
                losses.append(tiny_model(input_ids=ids, labels=labels).loss.item())
        reference.append(losses[0] / losses[1])
    np.testing.assert_allclose(scores.ifd, reference, rtol=1e-4)
    # Selection: IFD > max_ifd dropped, then the highest IFD first.
    recs = records_of(*zip(prompts, responses))
    max_ifd = float(np.sort(reference)[-2:].mean())  # the highest is above the cap
    sel = DataSelectConfig(by="ifd", budget=2, max_ifd=max_ifd)
    result = clean_records(recs, CleanConfig(dedup=OFF.dedup, filter=OFF.filter, select=sel),
                           scoring_model=(tiny_model, tiny_tokenizer))  # fmt: skip
    order = np.argsort(reference)[::-1]
    assert removed_reasons(result) == {
        int(order[0]): "ifd_above_max",
        int(order[3]): "not_selected",
    }
    assert result.report.selection["per_source"]["s"] == {"candidates": 4, "budget": 2, "selected": 2}


def test_build_ifd_rows_truncation():
    # 7 tokens of room: the response keeps its first half (3), the prompt its last 4
    assert build_ifd_rows(list(range(10)), [90, 91, 92, 93, 94, 95], [0], 8) == (
        [0, 6, 7, 8, 9, 90, 91, 92],
        [0, 90, 91, 92],
        3,
    )
    assert build_ifd_rows([1, 2], [90, 91, 92, 93, 94, 95], [0], 8) == (
        [0, 1, 2, 90, 91, 92, 93, 94],
        [0, 90, 91, 92, 93, 94],
        5,
    )


def test_select_by_length_random_budget_and_errors():
    recs = records_of(*[(f"q{i}", " ".join(["w"] * (i + 1))) for i in range(10)])
    by_len = clean_records(recs, CleanConfig(dedup=OFF.dedup, filter=OFF.filter,
                                             select=DataSelectConfig(by="length", share=0.3)))  # fmt: skip
    assert sorted(by_len.kept()) == [7, 8, 9]
    rand = [
        clean_records(
            recs,
            CleanConfig(dedup=OFF.dedup, filter=OFF.filter, select=DataSelectConfig(by="random", budget=4, seed=s)),
        ).kept()  # fmt: skip
        for s in (0, 0, 1)
    ]
    assert len(rand[0]) == 4 and rand[0] == rand[1] and rand[0] != rand[2]
    for bad in (DataSelectConfig(by="random"), DataSelectConfig(by="random", budget=1, share=0.1)):
        with pytest.raises(DataError, match="exactly one of budget"):
            clean_records(recs, CleanConfig(dedup=OFF.dedup, filter=OFF.filter, select=bad))
    with pytest.raises(DataError, match="needs a base model"):
        clean_records(
            recs, CleanConfig(dedup=OFF.dedup, filter=OFF.filter, select=DataSelectConfig(by="ifd", budget=1))
        )


def test_length_matched_picks_random_records_with_the_lengths_of_the_ifd_selection(tiny_model, tiny_tokenizer,
                                                                                    one_thread):  # fmt: skip
    # Two length groups: responses of 1-2 words and of 12-13 words. Whatever IFD picks, the control picks as
    # many records from each group, at random (other seeds, other records), and is scored by the same model.
    # The target is what IFD keeps: records above max_ifd (here the median) are never part of it.
    pairs = [(f"question {i}?", " ".join(["word"] * (1 + i % 2 + (11 if i >= 10 else 0)))) for i in range(20)]
    recs = records_of(*pairs)
    scores = score_records(tiny_model, tiny_tokenizer, [p for p, _ in pairs], [r for _, r in pairs])
    cap = float(np.median(scores.ifd))
    opts = {"dedup": OFF.dedup, "filter": OFF.filter}
    ifd = clean_records(recs, CleanConfig(**opts, select=DataSelectConfig(by="ifd", budget=6, max_ifd=cap)),
                        scoring_model=(tiny_model, tiny_tokenizer)).kept()  # fmt: skip
    assert all(scores.ifd[i] <= cap for i in ifd)
    long_ifd = sum(i >= 10 for i in ifd)
    picks = [
        clean_records(recs, CleanConfig(**opts, select=DataSelectConfig(by="length_matched", budget=6, seed=s,
                                                                        max_ifd=cap)),
                      scoring_model=(tiny_model, tiny_tokenizer)).kept()  # fmt: skip
        for s in (0, 1, 2)
    ]
    for kept in picks:
        assert len(kept) == 6 and sum(i >= 10 for i in kept) == long_ifd
    assert len({tuple(sorted(k)) for k in picks}) > 1  # random within the length bins


def test_diversity_skips_records_too_similar(tiny_model, tiny_tokenizer, one_thread):
    recs = records_of(
        ("Hello!", "How can I help you today?"),
        ("Hello!", "How can I help you today?"),  # same text: cosine 1
        ("def add(a, b):", "    return a + b"),
    )
    sel = DataSelectConfig(by="length", budget=2, diversity=0.9999)
    result = clean_records(recs, CleanConfig(dedup=OFF.dedup, filter=OFF.filter, select=sel),
                           scoring_model=(tiny_model, tiny_tokenizer))  # fmt: skip
    assert removed_reasons(result) == {1: "too_similar"}


# ------------------------------------------------------------------------------------------ counting, pipeline, CLI


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def two_sources(tmp_path):
    long_a = text(60, 11)
    long_b = " ".join(w if i != 30 else "different" for i, w in enumerate(long_a.split()))
    a = [
        {"instruction": "Tell me a fact.", "output": long_a},
        {"instruction": "Tell me a fact!", "output": long_a.upper()},  # exact duplicate of a:1
        {"instruction": "Say nothing.", "output": "  "},  # invalid (empty output)
        {"instruction": "Repeat the eval item.", "output": "Sentence: " + text(30, 12)},  # contaminated
        {"instruction": "Count.", "output": "one two three"},
    ]
    b = [
        {"instruction": "Tell me a fact.", "output": long_b},  # near duplicate of a:1 (other source)
        {"instruction": "Loop.", "output": "I am sorry. " * 30},  # repeated n-grams
        {"instruction": "Greet.", "output": "Hello there, how are you?"},
    ]
    ev = [{"sentence": text(30, 12), "label": 1}]
    return (
        write_jsonl(tmp_path / "a.jsonl", a),
        write_jsonl(tmp_path / "b.jsonl", b),
        write_jsonl(tmp_path / "ev.jsonl", ev),
    )


EXPECTED = {
    "a": {"exact_duplicate": 1, "empty_output": 1, "contaminated": 1},
    "b": {"near_duplicate": 1, "repeated_ngrams": 1},
}


def test_pipeline_counts_add_up_per_source_and_name_the_reason(two_sources, tiny_tokenizer, tmp_path):
    from sftlab.data.pipeline import build_dataset

    a, b, ev = two_sources
    clean = CleanConfig(decontaminate=DecontaminateConfig(eval_sets=(EvalSetConfig(path=str(ev)),)))
    cfg = DataConfig(sources=(SourceConfig(path=str(a)), SourceConfig(path=str(b))), clean=clean,
                     on_error="skip", cache_dir=None)  # fmt: skip
    skipped = tmp_path / "skipped.jsonl"
    ds, report = build_dataset(cfg, tiny_tokenizer, progress=False, skipped_path=str(skipped))
    for name, expected in EXPECTED.items():
        s = report.per_source[name]
        assert s.skipped == expected
        assert s.records_in == s.records_kept + sum(s.skipped.values()) + s.dropped_empty_mask + s.dropped_too_long
    assert report.records_kept == len(ds) == 3 and sorted(ds["origin"]) == ["a.jsonl:1", "a.jsonl:5", "b.jsonl:3"]
    removed = {r["origin"]: r for r in map(json.loads, skipped.read_text().splitlines())}
    assert removed["b.jsonl:1"]["operator"] == "near_dedup" and removed["b.jsonl:1"]["duplicate_of"] == "a.jsonl:1"
    assert removed["a.jsonl:2"]["duplicate_of"] == "a.jsonl:1" and removed["a.jsonl:4"]["eval_set"] == "ev"
    assert report.clean["per_source"]["a"]["records_in"] == 5 and report.clean["contamination"][0]["items_hit"] == 1


def test_pipeline_reads_and_converts_each_source_once(two_sources, tiny_tokenizer, monkeypatch):
    """With data.clean the pass and the encoder share one read and one conversion of every record."""
    import sftlab.data.clean.records as records_mod
    import sftlab.data.encode as encode_mod
    import sftlab.data.pipeline as pipeline_mod
    from sftlab.data.pipeline import build_dataset

    loads, conversions = [], []
    real_load, real_convert = records_mod.load_source, records_mod.to_conversation

    def counting_load(src, *args, **kwargs):
        loads.append(src.name)
        return real_load(src, *args, **kwargs)

    def counting_convert(*args, **kwargs):
        conversions.append(1)
        return real_convert(*args, **kwargs)

    for mod in (records_mod, pipeline_mod):
        monkeypatch.setattr(mod, "load_source", counting_load)
    for mod in (records_mod, encode_mod):
        monkeypatch.setattr(mod, "to_conversation", counting_convert)
    a, b, _ = two_sources
    cfg = DataConfig(sources=(SourceConfig(path=str(a)), SourceConfig(path=str(b))), clean=CleanConfig(),
                     on_error="skip", cache_dir=None)  # fmt: skip
    ds, report = build_dataset(cfg, tiny_tokenizer, progress=False)
    assert sorted(loads) == ["a", "b"] and len(conversions) == 8  # 5 + 3 records, each converted once
    assert report.records_in == 8 and len(ds) == report.records_kept


def test_cli_writes_kept_removed_and_report(two_sources, tmp_path, capsys):
    from sftlab.cli import main

    a, b, ev = two_sources
    out = tmp_path / "out"
    assert main(["data", "clean", str(a), str(b), "--out", str(out), "--eval-set", str(ev), "--no-progress"]) == 0
    kept = [json.loads(x) for x in (out / "kept.jsonl").read_text().splitlines()]
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert len(kept) + len(removed) == 8 and len(kept) == report["records_kept"] == 3
    assert [k["id"] for k in kept] == ["a.jsonl:1", "a.jsonl:5", "b.jsonl:3"]
    assert kept[1]["messages"] == [
        {"role": "user", "content": "Count."},
        {"role": "assistant", "content": "one two three"},
    ]
    by_source = {}
    for r in removed:
        by_source.setdefault(r["source"], {}).setdefault(r["reason"], 0)
        by_source[r["source"]][r["reason"]] += 1
    assert by_source == EXPECTED
    for s in report["per_source"].values():
        assert s["records_in"] == s["records_kept"] + sum(n for r in s["removed"].values() for n in r.values())
    printed = capsys.readouterr().out
    assert "data clean" in printed and "3 kept" in printed
    # kept.jsonl is a valid source for training (messages format)
    from sftlab.data.clean.records import load_records

    assert len(load_records((SourceConfig(path=str(out / "kept.jsonl")),), ["kept"])) == 3


def test_cli_config_and_errors(two_sources, tmp_path, capsys):
    from sftlab.cli import main

    a, b, _ = two_sources
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"data:\n  sources:\n    - path: {a}\n  clean:\n    dedup: {{near: none}}\n    filter: {{enabled: false}}\n"
    )
    out = tmp_path / "out"
    assert main(["data", "clean", str(cfg), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"validate": {"empty_output": 1}, "exact_dedup": {"exact_duplicate": 1}}
    assert main(["data", "clean", str(cfg), "--out", str(out), "--set", "data.clean.dedup.nearr=none"]) == 2
    assert "error: unknown config key 'data.clean.dedup.nearr'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ shared data


def test_alpaca_sets_combined_have_real_duplicates(shared_data, tmp_path):
    from sftlab.data.clean import clean_sources

    names = ["alpaca_gpt4_en_demo_llamafactory", "llms_from_scratch_instruction-data"]
    sources = tuple(SourceConfig(path=str(shared_data / "instruction" / f"{n}.jsonl")) for n in names)
    result = clean_sources(sources, names, CleanConfig(filter=FilterConfig(enabled=False)))
    dup = {result.records.ids[i]: info["duplicate_of"] for i, info in result.removed.items()}
    # Checked by hand: the same instruction and response twice; the same instruction with one synonym swapped.
    assert dup["alpaca_gpt4_en_demo_llamafactory.jsonl:509"] == "alpaca_gpt4_en_demo_llamafactory.jsonl:399"
    assert dup["llms_from_scratch_instruction-data.jsonl:1091"] == "llms_from_scratch_instruction-data.jsonl:282"
    assert result.report.removed_totals() == {
        "exact_dedup": {"exact_duplicate": 14},
        "near_dedup": {"near_duplicate": 7},
    }


def test_squad_decontamination_same_articles_vs_different_articles(shared_data, tmp_path):
    """Train: half the questions of articles 0-19; eval A: the other half (same contexts); eval B: articles
    20-47. Training records (context + question -> answer) hold their context, so A is found, B is not."""
    from sftlab.data.clean import clean_sources

    rows = [json.loads(line) for p in sorted((shared_data / "qa" / "squad_v1.1").glob("*.jsonl")) for line in open(p)]
    train = [r for i, r in enumerate(rows) if r["article_index"] < 20 and i % 2 == 0]
    same = [r for i, r in enumerate(rows) if r["article_index"] < 20 and i % 2 == 1]
    other = [r for r in rows if r["article_index"] >= 20]
    paths = {
        n: write_jsonl(tmp_path / f"{n}.jsonl", rs) for n, rs in (("train", train), ("same", same), ("other", other))
    }
    fields = ("context", "question")
    cfg = CleanConfig(
        dedup=DedupConfig(exact="none", near="none"),
        filter=FilterConfig(enabled=False),
        decontaminate=DecontaminateConfig(eval_sets=(EvalSetConfig(path=str(paths["other"]), fields=fields),
                                                     EvalSetConfig(path=str(paths["same"]), fields=fields))),
    )  # fmt: skip
    result = clean_sources((SourceConfig(path=str(paths["train"])),), ["train"], cfg)
    other_rep, same_rep = result.report.contamination
    assert same_rep["items_hit"] / same_rep["items"] > 0.95 and same_rep["records_removed"] > 0.9 * len(train)
    assert other_rep["items_hit"] <= 0.01 * other_rep["items"]
