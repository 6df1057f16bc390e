"""Weight interpolation between a base model and its fine-tune (WiSE-FT, Wortsman et al. 2022).

``theta(alpha) = base + alpha * (tuned - base)``, parameter by parameter: alpha 0 is the base, 1 the fine-tune,
0.5 is often a good trade between the fine-tune's specialty and the base's versatility. A LoRA fine-tune is
merged into the base first, so its points are ``base + alpha * merged LoRA delta``. ``torch.lerp`` computes
``end - (end - start) * (1 - alpha)`` for alpha >= 0.5, so alpha 0 and 1 give the base and tuned weights
bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import torch

from sftlab.config import ConfigError, EvalConfig
from sftlab.console import say
from sftlab.model.adapters import merge_lora, tied_embeddings, untie_embeddings


def load_tuned(tuned_dir: str | Path, base_model, dtype: str = "float32"):
    """The fine-tuned model: a saved model folder, or a LoRA adapter folder merged into ``base_model`` (a copy)."""
    from sftlab.eval.cli import load_model_and_tokenizer

    tuned_dir = Path(tuned_dir)
    if not tuned_dir.is_dir():
        raise ConfigError(f"--tuned: model folder not found: {tuned_dir}")
    if (tuned_dir / "adapter_config.json").is_file():
        from sftlab.model.load import attach_adapter

        merged = merge_lora(attach_adapter(copy.deepcopy(base_model), tuned_dir, "--base"))
        return merged.eval()
    return load_model_and_tokenizer(str(tuned_dir), dtype)[0]


def untie_like(base, tuned) -> None:
    """Untie ``base``'s input embedding and LM head where ``tuned`` has them apart (a merged adapter that changed one
    of the two): ``base`` computes the same, and its LM head is interpolated on its own."""
    if tied_embeddings(base) and not tied_embeddings(tuned):
        untie_embeddings(base)


def check_same_shape(base, tuned) -> None:
    """Both models must have the same parameters (names and shapes) to be interpolated."""
    a = {n: tuple(p.shape) for n, p in base.named_parameters()}
    b = {n: tuple(p.shape) for n, p in tuned.named_parameters()}
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:3]
        raise ConfigError(
            f"--base and --tuned are not the same architecture (first differences: {diff}); interpolate a "
            "fine-tune with the model it was fine-tuned from"
        )


@torch.no_grad()
def interpolate_into(target, base, tuned, alpha: float):
    """Set ``target``'s parameters to ``lerp(base, tuned, alpha)`` (all three of one architecture)."""
    tuned_params = dict(tuned.named_parameters())
    base_params = dict(base.named_parameters())
    for name, p in target.named_parameters():
        p.copy_(torch.lerp(base_params[name], tuned_params[name].to(base_params[name].dtype), alpha))
    return target


def alpha_name(alpha: float) -> str:
    return f"alpha={alpha:g}"


def source_stamp(tuned_dir: str | Path, eval_cfg: EvalConfig) -> str:
    """Identifies what an interpolation scorecard was made from: the tuned weights (sizes, mtimes) and eval."""
    files = sorted(Path(tuned_dir).glob("*.safetensors"))
    blob = json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files] + [repr(eval_cfg)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def reusable_card(path: Path, stamp: str) -> dict | None:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if card.get("source_stamp") == stamp else None


def run_interpolation(
    base_dir: str | Path,
    tuned_dir: str | Path,
    alphas: list[float],
    eval_cfg: EvalConfig,
    out_dir: str | Path,
    *,
    label: str = "",
    save_models: bool = False,
    progress: bool = True,
    reuse: bool = False,
) -> list[dict]:
    """Build and score each interpolated model against the base; writes ``OUT/alpha=A/scorecard.json``
    (and ``model/`` with ``save_models``). Returns points for ``tradeoff.write_tradeoff``. ``reuse`` keeps a
    scorecard written for the same tuned weights and eval config (a resumed sweep)."""
    from sftlab.eval.cli import load_model_and_tokenizer
    from sftlab.eval.scorecard import evaluate_for_config, write_scorecard

    if not eval_cfg.tasks:
        raise ConfigError("interpolate: the config has no eval.tasks to score the models with")
    if not alphas:
        raise ConfigError("interpolate: give at least one alpha, e.g. --alphas 0,0.5,1")
    out_dir = Path(out_dir)
    base, base_tok = load_model_and_tokenizer(str(base_dir))
    tuned = load_tuned(tuned_dir, base)
    untie_like(base, tuned)
    check_same_shape(base, tuned)
    tok = base_tok
    if (Path(tuned_dir) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tuned_dir))
    work = copy.deepcopy(base).eval()
    stamp = source_stamp(tuned_dir, eval_cfg)
    points = []
    for alpha in alphas:
        t0 = time.perf_counter()
        d = out_dir / alpha_name(alpha)
        card = reusable_card(d / "scorecard.json", stamp) if reuse and not save_models else None
        if card is None:
            interpolate_into(work, base, tuned, alpha)
            card = evaluate_for_config(eval_cfg, work, tok, base_model=base, base_tokenizer=base_tok,
                                       progress=progress, keep_items=True)
            card.update(model=f"interpolation of {tuned_dir} with {base_dir}", base=str(base_dir), alpha=alpha,
                        source_stamp=stamp)  # fmt: skip
            write_scorecard(card, d / "scorecard.json")
        elif progress:
            say(f"interpolate: reusing {d / 'scorecard.json'}")
        if save_models:
            work.save_pretrained(d / "model")
            tok.save_pretrained(d / "model")
        name = f"{label} {alpha_name(alpha)}".strip()
        points.append({"name": name, "group": "interpolation", "alpha": alpha, "card": card,
                       "seconds": round(time.perf_counter() - t0, 1), "scorecard": str(d / "scorecard.json")})  # fmt: skip
    (out_dir / "points.json").write_text(
        json.dumps([{k: v for k, v in p.items() if k != "card"} for p in points], indent=2), encoding="utf-8"
    )
    return points
