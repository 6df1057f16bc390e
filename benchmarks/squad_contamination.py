"""Decontamination on SQuAD v1.1 dev (../shared/data/qa/squad_v1.1): eval sets from the same articles as the
training split are found, eval sets from other articles are not.

    python benchmarks/squad_contamination.py [--train-articles 20] [--out runs/squad_contamination]

Splits by article (``title``): the training split is every other question of the first ``--train-articles``
articles (context + question -> answer, the extraction format); eval "same articles" is the remaining
questions of those articles (their contexts are in training records); eval "other articles" is every
question of the remaining articles. Eval items are the ``context`` and ``question`` fields; the pass runs
with dedup and filters off, so only decontamination removes records. Prints the table of ``sftlab data
clean`` and, per eval set, the items found; writes the split files and the outputs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--squad", default=str(SHARED / "qa" / "squad_v1.1"))
    p.add_argument("--train-articles", type=int, default=20)
    p.add_argument("--out", default="runs/squad_contamination")
    args = p.parse_args()

    from sftlab.cli import main as sftlab_main

    rows = [json.loads(line) for f in sorted(Path(args.squad).glob("*.jsonl")) for line in open(f, encoding="utf-8")]
    titles = list(dict.fromkeys(r["title"] for r in rows))
    train_titles = set(titles[: args.train_articles])
    train = [r for i, r in enumerate(rows) if r["title"] in train_titles and i % 2 == 0]
    same = [r for i, r in enumerate(rows) if r["title"] in train_titles and i % 2 == 1]
    other = [r for r in rows if r["title"] not in train_titles]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("eval_same_articles", same), ("eval_other_articles", other)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    print(
        f"{len(titles)} articles; train {len(train):,} questions of {len(train_titles)} articles; eval same "
        f"articles {len(same):,}; eval other articles {len(other):,} ({len(titles) - len(train_titles)} articles)"
    )
    config = out / "clean.yaml"
    config.write_text(
        "data:\n"
        f"  sources: [{{path: {out / 'train.jsonl'}, format: extraction}}]\n"
        "  clean:\n"
        "    dedup: {exact: none, near: none}\n"
        "    filter: {enabled: false}\n"
        "    decontaminate:\n"
        "      eval_sets:\n"
        f"        - {{path: {out / 'eval_same_articles.jsonl'}, fields: [context, question]}}\n"
        f"        - {{path: {out / 'eval_other_articles.jsonl'}, fields: [context, question]}}\n",
        encoding="utf-8",
    )
    t0 = time.perf_counter()
    sftlab_main(["data", "clean", str(config), "--out", str(out / "clean"), "--no-progress"])
    print(f"({time.perf_counter() - t0:.1f} s)")
    report = json.loads((out / "clean" / "report.json").read_text())
    for c in report["contamination"]:
        print(f"{c['name']}: {c['items_hit']:,} / {c['items']:,} eval items found ({c['items_hit'] / c['items']:.1%})")


if __name__ == "__main__":
    main()
