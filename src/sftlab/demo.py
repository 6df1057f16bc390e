"""The offline demo: build (once) a tiny pretrained base, fine-tune it on SST-2, compare base and tuned.

Everything it needs ships in the repository (``data/``, ``examples/``); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from sftlab import __version__
from sftlab.config import load_config

BASE_TEXT = ("text/wikitext-2-valid.txt", "text/tinyshakespeare.txt")


def find_repo_root() -> Path:
    """The folder holding ``data/`` and ``examples/``: the source checkout, else the current directory."""
    here = Path(__file__).resolve().parents[2]
    for cand in (here, Path.cwd()):
        if (cand / "data" / "sst2").is_dir() and (cand / "examples").is_dir():
            return cand
    raise FileNotFoundError("cannot find the bundled data/ and examples/ folders: run the demo from the sftlab checkout")


def chunk_text(lines, max_chars: int = 1000) -> list[str]:
    """Cut text into records of at most ~``max_chars`` characters at line boundaries; blank lines dropped.

    >>> chunk_text(["ab\\n", "\\n", "cd\\n", "efgh\\n"], max_chars=5)
    ['ab\\ncd', 'efgh']
    """
    records, cur, size = [], [], 0
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if cur and size + len(line) > max_chars:
            records.append("\n".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line) + 1
    if cur:
        records.append("\n".join(cur))
    return records


def _recipe_hash(root: Path, quick: bool) -> str:
    h = hashlib.sha256()
    h.update((root / "examples" / "tiny_base.yaml").read_bytes())
    for rel in BASE_TEXT:
        h.update(str((root / "data" / rel).stat().st_size).encode())
    h.update(f"{__version__}|quick={quick}".encode())
    return h.hexdigest()[:16]


def write_text_corpus(root: Path, out: Path, vocab_size: int) -> tuple[Path, Path, int]:
    """From the bundled text (``BASE_TEXT``): a BPE tokenizer of ``vocab_size`` tokens in ``out/tokenizer``
    and ``out/corpus.jsonl`` (one ``{"text"}`` record per ~1,000 characters). Returns (tokenizer folder,
    corpus file, records)."""
    from sftlab.model.tiny import train_bpe_tokenizer

    texts = [(root / "data" / rel).read_text(encoding="utf-8").splitlines(keepends=True) for rel in BASE_TEXT]
    tok = train_bpe_tokenizer((line for t in texts for line in t), vocab_size=vocab_size)
    tok.save_pretrained(out / "tokenizer")
    records = [r for t in texts for r in chunk_text(t)]
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"text": r}) + "\n")
    return out / "tokenizer", out / "corpus.jsonl", len(records)


def build_tiny_base(root: Path, cache: Path, rebuild: bool = False, quick: bool = False) -> Path:
    """Tokenizer + LM pretraining of the tiny base (``examples/tiny_base.yaml``); cached by recipe hash."""
    from sftlab.train.run import run_training

    base = cache / ("tiny-base-quick" if quick else "tiny-base")
    final, stamp = base / "run" / "final", base / "recipe.json"
    key = _recipe_hash(root, quick)
    if not rebuild and final.is_dir() and stamp.is_file() and json.loads(stamp.read_text()).get("hash") == key:
        print(f"tiny base: cached at {final}")
        return final
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    print("tiny base: training a 4,096-token BPE tokenizer on WikiText-2 valid + Tiny Shakespeare ...")
    tokenizer, corpus, n_records = write_text_corpus(root, base, vocab_size=4096)
    overrides = [
        f"model.tokenizer={tokenizer}",
        f"data.sources.0.path={corpus}",
        f"output.dir={base / 'run'}",
        f"data.cache_dir={cache / 'data'}",
    ]
    if quick:
        overrides += ["train.max_steps=30", "data.sources.0.limit=600"]
    cfg = load_config(root / "examples" / "tiny_base.yaml", overrides)
    print(f"tiny base: language-model training on {n_records:,} records (cached once built) ...")
    summary = run_training(cfg)
    stamp.write_text(json.dumps({"hash": key, "summary": {k: summary[k] for k in ("steps", "train_loss", "eval_loss")}}))
    return final


def run_demo(out_dir: str = "runs/demo", rebuild_base: bool = False, quick: bool = False) -> int:
    from rich.console import Console

    from sftlab.train.run import run_training

    console = Console()
    t0 = time.perf_counter()
    root = find_repo_root()
    cache = root / ".cache" / "sftlab"
    base = build_tiny_base(root, cache, rebuild=rebuild_base, quick=quick)
    out = Path(out_dir) / "sst2"
    overrides = [f"model.name_or_path={base}", f"output.dir={out}", f"data.cache_dir={cache / 'data'}"]
    for i, rel in enumerate(("data/sst2/train.jsonl",)):
        overrides.append(f"data.sources.{i}.path={root / rel}")
    overrides += [f"eval.tasks.0.path={root / 'data/sst2/dev.jsonl'}",
                  f"eval.tasks.1.path={root / 'data/text/wikitext-2-raw-test.txt'}"]
    if quick:
        overrides += ["train.max_steps=20", "data.sources.0.limit=640", "eval.tasks.0.limit=64",
                      "eval.tasks.1.max_tokens=4096", "eval.bootstrap_samples=200"]
    cfg = load_config(root / "examples" / "sst2.yaml", overrides)
    console.print(f"fine-tuning the tiny base on SST-2 ({'quick' if quick else 'full'} demo) ...")
    summary = run_training(cfg)
    console.print(
        f"run directory: {out}  (final model: {summary['final_dir']}, scorecard: {out / 'scorecard.json'})\n"
        f"demo finished in {time.perf_counter() - t0:.0f} s"
    )
    return 0
