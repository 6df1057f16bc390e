"""Specialty gain against versatility loss, one number each per point, with paired bootstrap CIs.

For a point (a tuned model's scorecard with per-item values for it and its base; ``eval.keep_items``):

- **specialty gain**: the change of the specialty task's headline metric (accuracy, F1, ...) from the base, in
  points (x 100);
- **versatility loss**: the mean, over the versatility tasks' headline metrics, of the relative change for the
  worse from the base, in percent: ``(base - model) / base`` for higher-is-better metrics, ``(model - base) /
  base`` for perplexity and losses, counted as 0 where the point is better than the base (a gain on one
  metric, e.g. shorter answers helping an untrained QA task, does not pay for a loss on another). KL to the base is a
  drift measure, not a score: shown by the scorecards, not counted here. A task with F1 counts its F1 (exact
  match of a weak base is often 0);
- **shares of a reference** (the full fine-tune): ``gain / gain_ref`` and ``loss / loss_ref``.

Every interval is a 95% percentile bootstrap: each task's items are resampled with one seed per task, the
same resamples for the base, every point and the reference, so differences and shares are paired; the tasks
are resampled independently of each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from sftlab.eval.compare import bootstrap_weights
from sftlab.eval.tradeoff import pareto_front, primary_metrics, save_figure

N_BOOT = 2000
TARGET = {"gain_share": 0.95, "loss_share": 0.25}  # keep >= 95% of the gain with <= 25% of the loss


def _seed(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def replicates(items: list[float], key: str, perplexity: bool, n_boot: int) -> np.ndarray:
    """``[estimate, resample 1, ..., resample n_boot]`` of the mean (exp of the mean NLL for perplexity)."""
    x = np.asarray(items, dtype=np.float64)
    means = np.concatenate([[x.mean()], *[w @ x / len(x) for w in bootstrap_weights(len(x), n_boot, _seed(key))]])
    return np.exp(means) if perplexity else means


def balance_metrics(card: dict) -> list[dict]:
    """Each task's headline metric as ``tradeoff.primary_metrics`` picks it, but F1 where a task has one: exact
    match of a weak base is often 0, and a relative change from 0 means nothing."""
    tasks = {t["name"]: t for t in card["tasks"]}
    out = []
    for m in primary_metrics(card):
        t = tasks[m["task"]]
        if m["metric"] != "f1" and "f1" in t["headline"]:
            hib = t["metrics"]["f1"]["higher_is_better"]
            m = {**m, "key": f"{t['name']}.f1", "metric": "f1", "item_key": "f1", "higher_is_better": hib}
        out.append(m)
    return out


def point_sides(card: dict, side: str, n_boot: int) -> dict[str, dict]:
    """task key -> {role, higher_is_better, model: replicates, base: replicates} of one scorecard."""
    tasks = {t["name"]: t for t in card["tasks"]}
    out = {}
    for m in balance_metrics(card):
        items = tasks[m["task"]]["items"]
        if not items.get("base"):
            raise ValueError(f"task {m['task']} has no base items: score with a base (eval.compare_base)")
        own = items[side][m["item_key"]]
        out[m["key"]] = {**m, "model": replicates(own, m["key"], m["perplexity"], n_boot),
                         "base": replicates(items["base"][m["item_key"]], m["key"], m["perplexity"], n_boot)}  # fmt: skip
    return out


def gain_and_loss(sides: dict[str, dict]) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of the specialty gain (points) and the versatility loss (%), as the module doc defines them."""
    spec = [s for s in sides.values() if s["role"] == "specialty"]
    vers = [s for s in sides.values() if s["role"] == "versatility"]
    if len(spec) != 1 or not vers:
        raise ValueError(f"need one specialty and at least one versatility task, got {len(spec)} and {len(vers)}")
    gain = 100 * (spec[0]["model"] - spec[0]["base"])
    if not spec[0]["higher_is_better"]:
        gain = -gain
    losses = []
    for s in vers:
        worse = (s["base"] - s["model"]) if s["higher_is_better"] else (s["model"] - s["base"])
        losses.append(np.maximum(0.0, 100 * worse / np.maximum(np.abs(s["base"]), 1e-12)))  # losses only
    return gain, np.mean(losses, axis=0)


def _ci(rep: np.ndarray) -> list[float]:
    finite = rep[1:][np.isfinite(rep[1:])]
    if finite.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def _run_facts(point: dict) -> dict:
    facts = {"train_s": None, "trainable_parameters": None}
    summary = Path(point["run_dir"]) / "summary.json" if point.get("run_dir") else None
    if summary is not None and summary.is_file():
        s = json.loads(summary.read_text(encoding="utf-8"))
        facts = {"train_s": s.get("train_time_s"), "trainable_parameters": s.get("trainable_parameters")}
    return facts


def balance_points(points: list[dict], reference: str = "full_ft", n_boot: int = N_BOOT) -> list[dict]:
    """Gain, loss and shares of the reference with CIs for points ``{name, group, card, side?, ...}``."""
    reps = {}
    for p in points:
        if p.get("group") == "base":
            reps[p["name"]] = None
            continue
        reps[p["name"]] = gain_and_loss(point_sides(p["card"], p.get("side", "model"), n_boot))
    ref = reps.get(reference)
    out = []
    for p in points:
        r = reps[p["name"]]
        row = {"name": p["name"], "group": p.get("group", p["name"]), **_run_facts(p)}
        if "alpha" in p:
            row["alpha"] = p["alpha"]
        if r is None:  # the base itself: no change by definition
            row.update(gain=0.0, gain_ci=[0.0, 0.0], loss=0.0, loss_ci=[0.0, 0.0])
        else:
            gain, loss = r
            row.update(gain=float(gain[0]), gain_ci=_ci(gain), loss=float(loss[0]), loss_ci=_ci(loss))
            if ref is not None and p["name"] != reference:
                with np.errstate(divide="ignore", invalid="ignore"):
                    gs, ls = gain / ref[0], loss / ref[1]
                row.update(gain_share=float(gs[0]), gain_share_ci=_ci(gs), loss_share=float(ls[0]),
                           loss_share_ci=_ci(ls))  # fmt: skip
                row["meets_target"] = bool(gs[0] >= TARGET["gain_share"] and ls[0] <= TARGET["loss_share"])
        out.append(row)
    front = pareto_front([[r["gain"], r["loss"]] for r in out], [True, False])
    for r, f in zip(out, front):
        r["pareto"] = f
    return out


def load_sweep_points(sweep_dir: str | Path) -> list[dict]:
    """A finished sweep's points (``tradeoff.json``) with their scorecards read back."""
    summary = json.loads((Path(sweep_dir) / "tradeoff.json").read_text(encoding="utf-8"))
    points = []
    for p in summary["points"]:
        card = json.loads(Path(p["scorecard"]).read_text(encoding="utf-8"))
        points.append({**p, "card": card, "side": "base" if p["group"] == "base" else "model"})
    return points


def _fmt(x: float | None, ci: list[float] | None = None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    scale, unit = (100, "%") if pct else (1, "")
    text = f"{x * scale:+.1f}{unit}" if not pct else f"{x * scale:.0f}{unit}"
    if ci is not None and all(math.isfinite(c) for c in ci):
        text += f" [{ci[0] * scale:+.1f}, {ci[1] * scale:+.1f}]" if not pct else f" [{ci[0] * scale:.0f}, {ci[1] * scale:.0f}]"
    return text


def format_balance(tasks: dict[str, list[dict]], title: str = "") -> str:
    lines = [f"# {title}\n" if title else ""]
    for task, rows in tasks.items():
        lines += [f"## {task}\n",
                  "| point | specialty gain (points) [95% CI] | versatility loss (%) [95% CI] | share of full FT's gain "
                  "| share of full FT's loss | train s | trainable params | Pareto |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            params = f"{r['trainable_parameters'] / 1e6:.1f}M" if r.get("trainable_parameters") else "-"
            lines.append(
                f"| {r['name']} | {_fmt(r['gain'], r['gain_ci'])} | {_fmt(r['loss'], r['loss_ci'])} | "
                f"{_fmt(r.get('gain_share'), r.get('gain_share_ci'), pct=True)} | "
                f"{_fmt(r.get('loss_share'), r.get('loss_share_ci'), pct=True)} | "
                f"{round(r['train_s']) if r.get('train_s') is not None else '-'} | {params} | "
                f"{'yes' if r['pareto'] else ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_balance(tasks: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """One panel per task: versatility loss (x, lower is better) against specialty gain (y), 95% CIs, the
    Pareto front dashed, the interpolation path as a line, the target region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(7.0 * len(tasks), 5.6), squeeze=False)
    groups = list(dict.fromkeys(r["group"] for rows in tasks.values() for r in rows))
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for ax, (task, rows) in zip(axes[0], tasks.items()):
        for r in rows:
            c = colors[r["group"]]
            ax.errorbar(r["loss"], r["gain"], xerr=[[r["loss"] - r["loss_ci"][0]], [r["loss_ci"][1] - r["loss"]]],
                        yerr=[[r["gain"] - r["gain_ci"][0]], [r["gain_ci"][1] - r["gain"]]], fmt="o", color=c,
                        ecolor=c, alpha=0.85, capsize=2, ms=6, label=r["group"])  # fmt: skip
            ax.annotate(r["name"], (r["loss"], r["gain"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        path_rows = sorted([r for r in rows if "alpha" in r or r["group"] == "base" or r["name"] == "full_ft"],
                           key=lambda r: r.get("alpha", 0.0 if r["group"] == "base" else 1.0))  # fmt: skip
        if len(path_rows) > 2:
            ax.plot([r["loss"] for r in path_rows], [r["gain"] for r in path_rows], "-", color="grey", alpha=0.4)
        front = sorted((r["loss"], r["gain"]) for r in rows if r["pareto"])
        ax.plot([a for a, _ in front], [b for _, b in front], "--", color="black", lw=1, label="Pareto front")
        ref = next((r for r in rows if r["name"] == "full_ft"), None)
        if ref is not None and ref["gain"] > 0 and ref["loss"] > 0:  # the target region, shaded
            (x0, _), (_, y1) = ax.get_xlim(), ax.get_ylim()
            ax.fill_betweenx([TARGET["gain_share"] * ref["gain"], y1], x0, TARGET["loss_share"] * ref["loss"],
                             color="green", alpha=0.08, label="target: >= 95% of full FT's gain, <= 25% of its loss")
            ax.set_xlim(left=x0)
            ax.set_ylim(top=y1)
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("versatility loss (% vs base, mean over versatility tasks; left = better)")
        ax.set_ylabel(f"{task} specialty gain (points vs base)")
        ax.set_title(task)
    return save_figure(fig, axes[0], path, title)


def write_balance(sweeps: dict[str, str | Path], out_dir: str | Path, title: str = "",
                  reference: str = "full_ft") -> list[Path]:  # fmt: skip
    """``OUT/tradeoff.{json,md,png}`` from finished sweeps ``{task: sweep folder}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = {task: balance_points(load_sweep_points(d), reference) for task, d in sweeps.items()}
    files = [out_dir / "tradeoff.json", out_dir / "tradeoff.md"]
    files[0].write_text(json.dumps({"title": title, "reference": reference, "target": TARGET, "tasks": tasks},
                                   indent=2), encoding="utf-8")  # fmt: skip
    files[1].write_text(format_balance(tasks, title), encoding="utf-8")
    files.append(plot_balance(tasks, out_dir / "tradeoff.png", title))
    return files
