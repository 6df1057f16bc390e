"""Cut the demo's small held-out eval slices from ../shared/data (run once; the output is committed).

    python tools/make_demo_data.py [--shared ../shared/data]

- data/instruction/heldout.jsonl: the last 100 records of the "LLMs from scratch" instruction data
  (Apache-2.0) as {"prompt", "reply"}, instruction and input joined by a blank line as sftlab's alpaca
  format does.
- data/squad/dev.jsonl: 120 SQuAD v1.1 dev questions (CC BY-SA 4.0), 4 per article from 30 articles, contexts
  under 700 characters, in file order.
- data/instruction/replay.jsonl: the first 600 records of the same instruction data (general instruction
  data for replay; disjoint from heldout.jsonl).
- data/squad/train.jsonl: up to 800 SQuAD v1.1 dev questions from the articles NOT in data/squad/dev.jsonl
  (training data for the trade-off experiment's QA task), contexts under 700 characters, at most 3 per
  context, the first gold answer only, in file order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    shared = Path(ap.parse_args().shared)

    rows = [json.loads(x) for x in open(shared / "instruction" / "llms_from_scratch_instruction-data.jsonl")]
    out = ROOT / "data" / "instruction" / "heldout.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows[-100:]:
            prompt = "\n\n".join(p for p in (r["instruction"], r.get("input", "")) if p.strip())
            f.write(json.dumps({"prompt": prompt, "reply": r["output"]}, ensure_ascii=False) + "\n")

    out = ROOT / "data" / "instruction" / "replay.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for r in rows[:600]:
            prompt = "\n\n".join(p for p in (r["instruction"], r.get("input", "")) if p.strip())
            f.write(json.dumps({"prompt": prompt, "reply": r["output"]}, ensure_ascii=False) + "\n")

    per_article: dict[int, int] = {}
    kept, rest = [], []
    for part in sorted((shared / "qa" / "squad_v1.1").glob("dev-v1.1.flat.part*.jsonl")):
        for line in open(part, encoding="utf-8"):
            r = json.loads(line)
            a = r["article_index"]
            if len(r["context"]) >= 700 or per_article.get(a, 0) >= 4 or (a not in per_article and len(per_article) >= 30):
                rest.append(r)
                continue
            per_article[a] = per_article.get(a, 0) + 1
            kept.append({k: r[k] for k in ("id", "title", "context", "question", "answers")})
    out = ROOT / "data" / "squad" / "dev.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    per_context: dict[str, int] = {}
    train = []
    for r in rest:
        c = r["context"]
        if r["article_index"] in per_article or len(c) >= 700 or per_context.get(c, 0) >= 3 or len(train) >= 800:
            continue
        per_context[c] = per_context.get(c, 0) + 1
        train.append({"id": r["id"], "title": r["title"], "context": c, "question": r["question"],
                      "answers": {"text": r["answers"]["text"][:1]}})
    with open(ROOT / "data" / "squad" / "train.jsonl", "w", encoding="utf-8") as f:
        for r in train:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    titles = {r["title"] for r in train}
    print(f"heldout instructions: 100, replay instructions: 600, squad dev: {len(kept)} questions from "
          f"{len(per_article)} articles, squad train: {len(train)} questions from {len(titles)} other articles")


if __name__ == "__main__":
    main()
