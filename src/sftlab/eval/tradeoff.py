"""The specialty / versatility plane: several models' scorecards as one table and one plot, Pareto front marked.

A *point* is ``{"name", "group", "card"}`` where ``card`` is a scorecard with per-item values (``keep_items``).
Each task contributes its first headline metric (accuracy, exact match, perplexity). Every value gets a 95%
percentile-bootstrap interval over the task's items; every change (vs the base, and vs a reference point such as
the full fine-tune) a paired interval and a verdict, as in the scorecard (eval/compare.py).

A point is on the Pareto front when no other point is at least as good on every metric and better on one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sftlab.eval.compare import ALPHA, bootstrap_weights, paired_compare
from sftlab.eval.entries import build_perplexity_metrics

N_BOOT = 2000


def primary_metrics(card: dict) -> list[dict]:
    """Per task: key ``task.metric``, role, higher_is_better, item key, for each task with items."""
    out = []
    for t in card["tasks"]:
        if "items" not in t or not t["headline"]:
            continue
        metric = t["headline"][0]
        item_key = "nll" if t["kind"] == "perplexity" else metric
        out.append({"key": f"{t['name']}.{metric}", "task": t["name"], "metric": metric, "role": t["role"],
                    "higher_is_better": t["metrics"][metric]["higher_is_better"], "item_key": item_key,
                    "perplexity": t["kind"] == "perplexity"})  # fmt: skip
    return out


def value_of(items: list[float], perplexity: bool) -> float:
    m = float(np.mean(items))
    return math.exp(m) if perplexity else m


def value_ci(items: list[float], perplexity: bool, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean (of exp(mean NLL) for perplexity) over the items."""
    x = np.asarray(items, dtype=np.float64)
    means = np.concatenate([w @ x / len(x) for w in bootstrap_weights(len(x), n_boot, seed)])
    if perplexity:
        means = np.exp(means)
    lo, hi = np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return [float(lo), float(hi)]


def compare_items(ref: list[float], other: list[float], perplexity: bool, higher_is_better: bool) -> dict:
    """Paired change ``other - ref``: delta, ci95, p_value, verdict (as a scorecard entry)."""
    if len(ref) != len(other):
        raise ValueError(f"cannot pair {len(ref)} and {len(other)} items (were both scored on the same data?)")
    if perplexity:
        mk = {"n_windows": len(ref)}
        res_o = {**mk, "perplexity": value_of(other, True), "items": [{"nll": v} for v in other]}
        res_r = {**mk, "perplexity": value_of(ref, True), "items": [{"nll": v} for v in ref]}
        e = build_perplexity_metrics(res_o, res_r, True, N_BOOT)["perplexity"]
    else:
        e = paired_compare(ref, other, higher_is_better=higher_is_better, n_boot=N_BOOT)
    return {k: e[k] for k in ("delta", "ci95", "p_value", "verdict")}


def side_of(point: dict) -> str:
    return point.get("side", "model")


def point_rows(point: dict) -> dict[str, dict]:
    """key -> {value, ci95, items, role, higher_is_better, perplexity, vs_base} of one point."""
    card, side = point["card"], side_of(point)
    tasks = {t["name"]: t for t in card["tasks"]}
    out = {}
    for m in primary_metrics(card):
        t = tasks[m["task"]]
        items = t["items"][side][m["item_key"]]
        row = {**m, "items": items, "value": value_of(items, m["perplexity"]), "ci95": value_ci(items, m["perplexity"])}
        base_items = (t["items"].get("base") or {}).get(m["item_key"])
        if side == "model" and base_items is not None:
            row["vs_base"] = compare_items(base_items, items, m["perplexity"], m["higher_is_better"])
        out[m["key"]] = row
    return out


def base_point(card: dict, name: str = "base") -> dict:
    """The base model of a scorecard (its ``base`` side) as a point."""
    return {"name": name, "group": "base", "card": card, "side": "base"}


def pareto_front(values: list[list[float]], higher_is_better: list[bool]) -> list[bool]:
    """Which points no other point dominates (at least as good on every objective, better on one).

    >>> pareto_front([[0.7, 300], [0.6, 250], [0.6, 400], [0.5, 250]], [True, False])
    [True, True, False, False]
    """
    signed = [[v if up else -v for v, up in zip(row, higher_is_better)] for row in values]
    front = []
    for i, p in enumerate(signed):
        dominated = any(
            all(q_k >= p_k for q_k, p_k in zip(q, p)) and any(q_k > p_k for q_k, p_k in zip(q, p))
            for j, q in enumerate(signed)
            if j != i
        )
        front.append(not dominated)
    return front


def summarize_points(points: list[dict], reference: str | None = None) -> dict:
    """The table data: metrics (columns), and per point its rows, its change vs the reference and front flags."""
    rows = [point_rows(p) for p in points]
    keys = list(rows[0])
    for p, r in zip(points, rows):
        if list(r) != keys:
            raise ValueError(f"point {p['name']!r} was scored on other tasks ({list(r)} vs {keys})")
    metrics = [
        {k: v for k, v in rows[0][key].items() if k not in ("items", "value", "ci95", "vs_base")} for key in keys
    ]
    ref_rows = None
    if reference is not None:
        names = [p["name"] for p in points]
        if reference not in names:
            raise ValueError(f"reference {reference!r} is not one of the points ({', '.join(names)})")
        ref_rows = rows[names.index(reference)]
    front = pareto_front([[r[k]["value"] for k in keys] for r in rows], [m["higher_is_better"] for m in metrics])
    out_points = []
    for p, r, on_front in zip(points, rows, front):
        entry = {"name": p["name"], "group": p.get("group") or p["name"], "pareto": on_front, "metrics": {}}
        for extra in ("alpha", "seconds", "run_dir", "scorecard"):
            if extra in p:
                entry[extra] = p[extra]
        for k in keys:
            m = {"value": r[k]["value"], "ci95": r[k]["ci95"], "n": len(r[k]["items"])}
            if "vs_base" in r[k]:
                m["vs_base"] = r[k]["vs_base"]
            if ref_rows is not None and p["name"] != reference:
                m["vs_reference"] = compare_items(
                    ref_rows[k]["items"], r[k]["items"], r[k]["perplexity"], r[k]["higher_is_better"]
                )
            entry["metrics"][k] = m
        out_points.append(entry)
    return {"metrics": metrics, "reference": reference, "points": out_points}


def _num(x: float) -> str:
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "-") + _num(abs(x))


def _change(c: dict) -> str:
    lo, hi = c["ci95"]
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{_signed(c['delta'])}"
    verdict = {"better": " better", "worse": " worse"}.get(c["verdict"], "")
    return f"{_signed(c['delta'])} [{_signed(lo)}, {_signed(hi)}]{verdict}"


def _label(m: dict) -> str:
    side = "higher" if m["higher_is_better"] else "lower"
    return f"{m['key']} ({m['role']}, {side} is better)"


def format_markdown(summary: dict, title: str = "") -> str:
    """Markdown tables: values [95% CI] with the Pareto flag; changes vs base; changes vs the reference."""
    metrics, points = summary["metrics"], summary["points"]
    head = "| point | " + " | ".join(_label(m) for m in metrics) + " |"
    sep = "|---|" + "---|" * len(metrics)
    lines = [f"### {title}", ""] if title else []
    lines += ["Values [95% CI]; **bold**: on the Pareto front (no other point is as good on every metric and "
              "better on one).", "", head + " Pareto front |", sep + "---|"]  # fmt: skip
    for p in points:
        cells = [f"{_num(p['metrics'][m['key']]['value'])} [{_num(p['metrics'][m['key']]['ci95'][0])}, "
                 f"{_num(p['metrics'][m['key']]['ci95'][1])}]" for m in metrics]  # fmt: skip
        name = f"**{p['name']}**" if p["pareto"] else p["name"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if p['pareto'] else ''} |")
    with_base = [p for p in points if all("vs_base" in p["metrics"][m["key"]] for m in metrics)]
    if with_base:
        lines += ["", "Change vs the base model [95% paired CI], verdict when significant:", "", head, sep]
        for p in with_base:
            cells = [_change(p["metrics"][m["key"]]["vs_base"]) for m in metrics]
            lines.append(f"| {p['name']} | " + " | ".join(cells) + " |")
    ref = summary.get("reference")
    if ref:
        lines += ["", f"Change vs {ref} [95% paired CI], verdict when significant:", "", head, sep]
        for p in points:
            if p["name"] == ref:
                continue
            cells = [_change(p["metrics"][m["key"]]["vs_reference"]) for m in metrics]
            lines.append(f"| {p['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(summary: dict, path: str | Path, title: str = "") -> Path | None:
    """Specialty (y) against each versatility metric (x, one panel each), 95% CIs as error bars, better up and
    to the right, the 2-D Pareto front of each panel as a dashed line. None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, points = summary["metrics"], summary["points"]
    spec = [m for m in metrics if m["role"] == "specialty"]
    vers = [m for m in metrics if m["role"] == "versatility"]
    if not spec or not vers:
        return None
    y = spec[0]
    fig, axes = plt.subplots(1, len(vers), figsize=(6.2 * len(vers), 5.0), squeeze=False)
    groups = list(dict.fromkeys(p["group"] for p in points))
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for ax, x in zip(axes[0], vers):
        xs = [p["metrics"][x["key"]]["value"] for p in points]
        ys = [p["metrics"][y["key"]]["value"] for p in points]
        for p, xv, yv in zip(points, xs, ys):
            xm, ym = p["metrics"][x["key"]], p["metrics"][y["key"]]
            ax.errorbar(xv, yv, xerr=[[xv - xm["ci95"][0]], [xm["ci95"][1] - xv]],
                        yerr=[[yv - ym["ci95"][0]], [ym["ci95"][1] - yv]], fmt="o", color=colors[p["group"]],
                        ecolor=colors[p["group"]], alpha=0.85, capsize=2, ms=6,
                        label=p["group"])  # fmt: skip
            ax.annotate(p["name"], (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
        interp = sorted((p.get("alpha", 0.0), xv, yv) for p, xv, yv in zip(points, xs, ys) if "alpha" in p)
        if len(interp) > 1:
            ax.plot([t[1] for t in interp], [t[2] for t in interp], "-", color=colors["interpolation"], alpha=0.4)
        front = pareto_front([[a, b] for a, b in zip(xs, ys)], [x["higher_is_better"], y["higher_is_better"]])
        fp = sorted((a, b) for a, b, f in zip(xs, ys, front) if f)
        ax.plot([a for a, _ in fp], [b for _, b in fp], "--", color="black", lw=1, label="Pareto front")
        ax.scatter([a for a, _ in fp], [b for _, b in fp], s=150, facecolors="none", edgecolors="black", lw=1)
        if x["perplexity"]:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if not x["higher_is_better"]:
            ax.invert_xaxis()
        ax.set_xlabel(f"{x['key']} ({'higher' if x['higher_is_better'] else 'lower'} is better; right = better)")
        ax.set_ylabel(f"{y['key']} (specialty)")
    return save_figure(fig, axes[0], path, title)


def save_figure(fig, axes, path: str | Path, title: str = "") -> Path:
    """Grid and one legend entry per label on every panel, the title, then ``path`` (PNG) and close."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tradeoff(points: list[dict], out_dir: str | Path, *, stem: str = "tradeoff", title: str = "",
                   reference: str | None = None) -> dict:  # fmt: skip
    """Write ``OUT/<stem>.md``, ``.json`` and ``.png``; returns the summary (see ``summarize_points``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_points(points, reference)
    (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(format_markdown(summary, title), encoding="utf-8")
    png = plot_tradeoff(summary, out_dir / f"{stem}.png", title)
    summary["files"] = [str(out_dir / f"{stem}.{ext}") for ext in ("md", "json")] + ([str(png)] if png else [])
    return summary
