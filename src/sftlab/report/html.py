"""``report.html``: one self-contained page (inline CSS and SVG, no script, no network) for one or more runs.

Sections, in order (each ``<section id=...>`` is always present; a missing input is said, not hidden):
overview, training (loss, learning rate, throughput, gradient norm), evals (task scores logged during
training), scorecard (base vs tuned with 95% CIs), tradeoff (specialty against versatility), samples
(generations on held-out prompts before and after training), data (sources, counts, removals, length
histograms, trained-token shares, mixture), config (key settings, or the differences between runs).

Numbers in tables carry their exact value in ``data-value``; chart series carry theirs in ``data-x`` /
``data-y`` (see svg.py).
"""

from __future__ import annotations

import datetime
import os
from html import escape
from pathlib import Path

from sftlab import __version__
from sftlab.report import svg
from sftlab.report.rundir import RunData, headline, load_run

SECTIONS = ("overview", "training", "evals", "scorecard", "tradeoff", "samples", "data", "config")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2127;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:18px 26px 60px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:30px 0 8px;border-bottom:1px solid #d9dde3;
padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px;color:#333}
.sub{color:#5b6370;font-size:13px}nav a{margin-right:12px;font-size:13px;color:#2f5d8a;text-decoration:none}
table{border-collapse:collapse;font-size:12.5px;background:#fff;margin:4px 0 8px}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f0f2f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#1f7a46;font-weight:600}.worse{color:#c0392b;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{display:inline-block;background:#fff;border:1px solid #e1e4e8;border-radius:6px;
padding:8px 10px}.card h3{margin:0 0 4px}
.empty{color:#6b7280;font-style:italic;font-size:13px}.warn{color:#a15c00}
pre{background:#fff;border:1px solid #e1e4e8;padding:8px;font-size:12px;overflow:auto;max-height:420px;
white-space:pre-wrap;margin:4px 0}
td pre{border:0;padding:0;margin:0;max-height:160px;background:transparent}
table.samples{table-layout:fixed;width:100%}
details summary{cursor:pointer;font-size:13px;color:#2f5d8a}
.bar{display:inline-block;height:9px;background:#4e79a7;vertical-align:middle;margin-right:6px}
"""


# ------------------------------------------------------------------------------------------ small pieces


def num(v, digits: int = 4) -> str:
    """A right-aligned table cell with the exact value in ``data-value``."""
    exact = "" if v is None else repr(v)
    return f'<td class="num" data-value="{escape(exact, quote=True)}">{escape(svg.format_number(v, digits))}</td>'


def cell(text) -> str:
    return f"<td>{escape('' if text is None else str(text))}</td>"


def table(headers: list[str], rows: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table class="{cls}"><tr>{head}</tr>' + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>"


def empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{escape(title)}</h3>{body}</div>'


def short_path(path) -> str:
    """A path under the current folder as a relative path (shorter, and the same on every machine)."""
    p = Path(str(path))
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            pass
    return str(path)


def flatten(d, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": 1, "c.0.d": 2}`` (lists of scalars kept whole)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def series_of(run: RunData, key: str) -> tuple[list[float], list[float | None]]:
    """(steps, values) of one metrics.jsonl key, over the lines that have it."""
    recs = [r for r in run.metrics if key in r]
    return [r["step"] for r in recs], [r[key] for r in recs]


def keys_with_prefix(runs: list[RunData], prefix: str) -> list[str]:
    seen = []
    for run in runs:
        for rec in run.metrics:
            for k in rec:
                if k.startswith(prefix) and k not in seen:
                    seen.append(k)
    return seen


def _wide_range(values) -> bool:
    vals = [v for v in values if svg.is_number(v) and v > 0]
    return bool(vals) and max(vals) / min(vals) > 30


# ------------------------------------------------------------------------------------------ sections


def section_overview(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        s = run.summary or {}
        steps = f"{run.last_step if run.last_step is not None else '-'}"
        if run.total_steps:
            steps += f" / {run.total_steps}"
        model = run.config.get("model", {})
        base = short_path(model.get("name_or_path") or "") or ("from scratch" if model.get("from_scratch") else "")
        heads = "; ".join(
            f"{h['task']}.{h['metric']} {svg.format_number(h['model'])}"
            + (f" ({h['delta']:+.4g}, {h['verdict']})" if h.get("delta") is not None else "")
            for h in headline(run.scorecard)
            if h["metric"] != "kl_to_base"
        )
        rows.append(
            cell(run.name)
            + cell(run.status)
            + f"<td>{escape(steps)}</td>"
            + num(run.last_value("loss"))
            + num(run.last_value("eval_loss"))
            + num(s.get("train_time_s") or run.last_value("elapsed_s"), 3)
            + num(s.get("tokens_per_s"))
            + num(s.get("tokens") or run.last_value("tokens"))
            + num(s.get("trainable_parameters"))
            + cell(base)
            + cell(heads or "-")
        )
    out = table(
        [
            "run",
            "status",
            "steps",
            "train loss (last)",
            "eval loss (last)",
            "train time s",
            "tokens/s",
            "tokens",
            "trainable params",
            "base model",
            "scorecard headline (change, verdict)",
        ],
        rows,
    )
    notes = [
        f"{r.name}: {r.bad_metric_lines} unreadable line(s) in metrics.jsonl skipped"
        for r in runs
        if r.bad_metric_lines
    ]
    return out + "".join(f'<p class="warn">{escape(n)}</p>' for n in notes)


KEY_SETTINGS = (
    "model.name_or_path",
    "lora.enabled",
    "lora.r",
    "select.preset",
    "data.template",
    "data.mask",
    "data.max_seq_len",
    "data.packing",
    "train.epochs",
    "train.max_steps",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.lr",
    "train.scheduler",
    "train.warmup_ratio",
    "train.warmup_steps",
    "train.weight_decay",
    "train.precision",
    "train.seed",
    "eval.split_ratio",
)


def section_config(runs: list[RunData]) -> str:
    runs = [r for r in runs if r.config]
    if not runs:
        return empty("no config.yaml (scorecard files only)")
    flat = [flatten(r.config) for r in runs]
    if len(runs) == 1:
        keys = [k for k in KEY_SETTINGS if k in flat[0]]
        keys += [k for k in flat[0] if k.startswith("data.sources.") and k.rsplit(".", 1)[-1] in ("path", "format")]
        title, headers = "key settings", ["key", "value"]
    else:
        keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
        title, headers = "settings that differ between runs", ["key", *[r.name for r in runs]]
    rows = ["<td><code>" + escape(k) + "</code></td>" + "".join(cell(f.get(k)) for f in flat) for k in keys]
    out = f"<h3>{escape(title)}</h3>" + (table(headers, rows) if rows else empty("all settings are the same"))
    for r in runs:
        out += (
            f"<details><summary>{escape(r.name)}: config.yaml (the resolved config)</summary>"
            f"<pre>{escape(r.config_text)}</pre></details>"
        )
    return out


def _source_table(rep: dict) -> str:
    sources = list(rep.get("per_source", {}).values())
    all_trained = sum(s["trained_tokens"] for s in sources) or 1
    rows = []
    for s in sources:
        removed = s["records_in"] - s["records_kept"]
        share = s["trained_tokens"] / all_trained
        rows.append(
            cell(s["name"])
            + cell(s["format"])
            + num(s["records_in"])
            + num(s["records_kept"])
            + num(removed)
            + num(s["truncated"])
            + num(s["total_tokens"])
            + num(s["trained_tokens"])
            + num(round(s["trained_tokens"] / max(s["total_tokens"], 1), 4))
            + f'<td class="num" data-value="{share!r}"><span class="bar" style="width:{60 * share:.0f}px">'
            f"</span>{100 * share:.1f}%</td>"
        )
    return table(
        [
            "source",
            "format",
            "records in",
            "kept",
            "removed",
            "truncated",
            "tokens",
            "trained tokens",
            "trained share of its tokens",
            "share of all trained tokens",
        ],
        rows,
    )


def _data_report(rep: dict) -> str:
    out = [
        f'<p class="sub">template <code>{escape(str(rep.get("template")))}</code>, mask '
        f"<code>{escape(str(rep.get('mask')))}</code>, max_seq_len {rep.get('max_seq_len')} "
        f"({escape(str(rep.get('truncation')))}){', from the tokenised-data cache' if rep.get('from_cache') else ''}"
        "</p>",
        _source_table(rep),
    ]
    stats = (
        "length_min",
        "length_median",
        "length_p95",
        "length_max",
        "length_mean",
        "total_tokens",
        "trained_tokens",
        "trained_share",
    )
    out.append(
        table(
            ["records in", "kept", "truncated", *[s.replace("_", " ") for s in stats]],
            ["".join(num(rep.get(k)) for k in ("records_in", "records_kept", "truncated", *stats))],
        )
    )
    removed = {
        **rep.get("skipped", {}),
        "empty_mask": rep.get("dropped_empty_mask", 0),
        "too_long": rep.get("dropped_too_long", 0),
    }
    removed = {k: v for k, v in removed.items() if v}
    out.append("<h3>removed records</h3>")
    if removed:
        out.append(table(["reason", "records"], [cell(k) + num(v) for k, v in sorted(removed.items())]))
        ex = rep.get("examples_removed", [])[:5]
        if ex:
            out.append(
                table(
                    ["origin", "reason", "error"],
                    [cell(e.get("origin")) + cell(e.get("reason")) + cell(e.get("error")) for e in ex],
                )
            )
    else:
        out.append(empty("none: every record was kept"))
    warnings = ([rep["eot_warning"]] if rep.get("eot_warning") else []) + list(rep.get("warnings", []))
    out += [f'<p class="warn">warning: {escape(w)}</p>' for w in warnings]
    hist = rep.get("histograms")
    if hist:
        charts = [
            card(
                "tokens per record",
                svg.stacked_histogram(
                    hist["length_edges"], hist["length_counts"], x_label="tokens per record", width=560
                ),
            ),
            card(
                "trained tokens per record",
                svg.stacked_histogram(
                    hist["trained_edges"], hist["trained_counts"], x_label="trained tokens per record", width=560
                ),
            ),
        ]
        out.append(
            '<h3>records trained on (after the eval split and mixing)</h3><div class="grid">'
            + "".join(charts)
            + "</div>"
        )
    else:
        out.append(empty("no length histograms (data_report.json of an older run)"))
    if rep.get("mixture", {}).get("sources"):
        out.append(mixture_table(rep["mixture"], "mixture trained on"))
    return "".join(out)


def mixture_table(mix: dict, title: str) -> str:
    """A mixture report (data/mixing.py): records drawn per source and the shares of records / tokens."""
    rows = [
        cell(name)
        + num(m.get("selected"))
        + num(m.get("available"))
        + num(m.get("repeats"))
        + num(m.get("records_share"))
        + num(m.get("tokens_share"))
        + num(m.get("trained_tokens_share"))
        for name, m in mix["sources"].items()
    ]
    head = f"<h3>{escape(title)} ({escape(str(mix.get('mode')))}: {svg.format_number(mix.get('records'))} records)</h3>"
    return head + table(
        ["source", "records drawn", "available", "repeats", "share of records", "of tokens", "of trained tokens"], rows
    )


def section_data(runs: list[RunData]) -> str:
    parts = []
    for run in runs:
        if len(runs) > 1:
            parts.append(f"<h3>{escape(run.name)}</h3>")
        reps = run.data_report or {}
        if not reps:
            parts.append(empty("no data_report.json"))
            continue
        parts.append(_data_report(reps["train"]))
        if "eval" in reps:
            parts.append("<h3>eval file</h3>" + _data_report(reps["eval"]))
        for name, mix in (reps.get("stages") or {}).items():
            if isinstance(mix, dict) and mix.get("sources"):
                parts.append(mixture_table(mix, f"stage {name}: mixture"))
    return "".join(parts)


def _chart(title: str, series: list[svg.Series], y_label: str, log_y: bool = False, marks=(), zero=False) -> str:
    chart = svg.line_chart(series, x_label="step", y_label=y_label, log_y=log_y, marks=marks, zero=zero)
    return card(title, chart)


def stage_starts(run: RunData) -> list[tuple[float, str]]:
    """(first logged step, stage name) of each stage of a staged run (metrics lines carry ``stage``)."""
    starts, last = [], None
    for rec in run.metrics:
        if rec.get("stage") is not None and rec["stage"] != last:
            starts.append((rec["step"], str(rec["stage"])))
            last = rec["stage"]
    return starts if len(starts) > 1 else []


def section_training(runs: list[RunData]) -> str:
    runs = [r for r in runs if r.metrics]
    if not runs:
        return empty("no metrics.jsonl")
    single = len(runs) == 1
    loss, lr, tps, gnorm = [], [], [], []
    for i, run in enumerate(runs):
        color = svg.PALETTE[i % len(svg.PALETTE)]
        prefix = "" if single else f"{run.name} "
        loss.append(svg.Series(f"{prefix}train loss", *series_of(run, "loss"), color=color, width=2))
        x, y = series_of(run, "eval_loss")
        if x:
            loss.append(
                svg.Series(
                    f"{prefix}eval loss",
                    x,
                    y,
                    color=color if not single else "#e15759",
                    dashed=True,
                    markers=True,
                    width=2,
                )
            )
        if single:  # per-source losses when the run logged them (loss/<source>, eval_loss/<source>)
            extra = [k for k in keys_with_prefix(runs, "loss/")] + keys_with_prefix(runs, "eval_loss/")
            for j, k in enumerate(extra):
                loss.append(
                    svg.Series(
                        k,
                        *series_of(run, k),
                        color=svg.PALETTE[(j + 3) % len(svg.PALETTE)],
                        dashed=k.startswith("eval_"),
                        markers=k.startswith("eval_"),
                        width=1.2,
                    )
                )
        lr.append(svg.Series(f"{prefix}lr", *series_of(run, "lr"), color=color))
        tps.append(svg.Series(f"{prefix}tokens/s", *series_of(run, "tokens_per_s"), color=color))
        gnorm.append(svg.Series(f"{prefix}grad norm", *series_of(run, "grad_norm"), color=color))
    loss_values = [v for s in loss for v in s.y]
    marks = stage_starts(runs[0]) if single else []
    charts = [
        _chart("loss", loss, "loss (nats / trained token)", log_y=_wide_range(loss_values), marks=marks),
        _chart("learning rate", lr, "learning rate", marks=marks, zero=True),
        _chart("throughput", tps, "tokens / s (since the previous log line)", zero=True),
        _chart("gradient norm (before clipping)", gnorm, "grad norm", log_y=_wide_range(v for s in gnorm for v in s.y)),
    ]
    rows = []
    for run in runs:
        last = run.metrics[-1]
        rows.append(
            cell(run.name)
            + num(last.get("step"))
            + num(last.get("epoch"))
            + num(run.last_value("loss"))
            + num(run.last_value("eval_loss"))
            + num(last.get("tokens"))
            + num(last.get("trained_tokens"))
            + num(last.get("elapsed_s"), 3)
        )
    final = table(
        ["run", "last step", "epoch", "train loss", "eval loss", "tokens", "trained tokens", "elapsed s"], rows
    )
    return '<div class="grid">' + "".join(charts) + "</div><h3>last logged values</h3>" + final


def section_evals(runs: list[RunData]) -> str:
    keys = keys_with_prefix(runs, "eval/")
    if not keys:
        return empty("no task scores during training (set eval.every_steps with eval.tasks to log them)")
    charts = []
    for key in keys:
        series = [
            svg.Series(run.name, *series_of(run, key), color=svg.PALETTE[i % len(svg.PALETTE)], markers=True)
            for i, run in enumerate(runs)
        ]
        charts.append(_chart(key.removeprefix("eval/"), series, key.rsplit("/", 1)[-1]))
    return '<div class="grid">' + "".join(charts) + "</div>"


def _verdict_cell(v) -> str:
    v = v or "-"
    return f'<td class="{escape(v)}">{escape(v)}</td>'


def _change_cell(m: dict) -> str:
    if m.get("delta") is None:
        return "<td>-</td>"
    ci = m.get("ci95") or [None, None]
    text = f"{m['delta']:+.4g}"
    if ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:+.3g}, {ci[1]:+.3g}]"
    data = escape(repr([m["delta"], ci[0], ci[1]]), quote=True)
    return f'<td class="num" data-value="{data}">{escape(text)}</td>'


def _scorecard_single(run: RunData) -> str:
    card_ = run.scorecard
    rows = []
    for t in card_["tasks"]:
        for name, m in t["metrics"].items():
            rows.append(
                cell(t["name"])
                + cell(t["role"])
                + cell(name)
                + num(m.get("n"))
                + num(m.get("base"))
                + num(m.get("model"))
                + _change_cell(m)
                + num(m.get("p_value"), 3)
                + cell(m.get("test"))
                + _verdict_cell(m.get("verdict"))
            )
    out = table(
        ["task", "side", "metric", "n", "base", "tuned", "change [95% CI]", "p", "test", "verdict"],
        rows,
        cls="scorecard",
    )
    irows = []
    for h in headline(card_):
        lo = hi = None
        if h["base"] is not None and h.get("ci95") and h["ci95"][0] is not None:
            lo, hi = h["base"] + h["ci95"][0], h["base"] + h["ci95"][1]
        irows.append(
            svg.IntervalRow(
                f"{h['task']} {h['metric']}",
                h["base"],
                h["model"],
                lo,
                hi,
                h["verdict"],
                log=h["metric"] == "perplexity",
            )
        )
    if irows:
        out += card("headline metrics: base and tuned", svg.interval_rows(irows))
    summary = card_.get("summary", {})
    lines = [f"{side}: " + "; ".join(f"{v} {', '.join(k)}" for v, k in d.items() if k) for side, d in summary.items()]
    out += "".join(f'<p class="sub">{escape(line)}</p>' for line in lines if not line.endswith(": "))
    return out


def find_headline(run: RunData, key: tuple[str, str]) -> dict | None:
    return next((h for h in headline(run.scorecard) if (h["task"], h["metric"]) == key), None)


def _scorecard_compare(runs: list[RunData]) -> str:
    """One row per headline metric, a column group per run; one base column when every run has the same base."""
    metrics = list(dict.fromkeys((h["task"], h["metric"]) for run in runs for h in headline(run.scorecard)))
    bases = {key: {repr((find_headline(r, key) or {}).get("base")) for r in runs} for key in metrics}
    shared_base = all(len(b) == 1 for b in bases.values())
    rows = []
    for key in metrics:
        found = [find_headline(r, key) for r in runs]
        row = cell(f"{key[0]} {key[1]}") + (num(found[0]["base"] if found[0] else None) if shared_base else "")
        for h in found:
            if h is None:
                row += "<td>-</td>" * (2 if shared_base else 3)
                continue
            verdict = escape(h["verdict"] or "")
            row += ("" if shared_base else num(h["base"])) + num(h["model"])
            row += _change_cell(h).replace("</td>", f" {verdict}</td>")
        rows.append(row)
    per_run = ["tuned", "change [95% CI]"] if shared_base else ["base", "tuned", "change [95% CI]"]
    headers = ["metric"] + (["base"] if shared_base else []) + [f"{r.name}: {c}" for r in runs for c in per_run]
    note = "" if shared_base else '<p class="sub">The runs have different base models (or base scores).</p>'
    return table(headers, rows, cls="scorecard") + note


def section_scorecard(runs: list[RunData]) -> str:
    with_card = [r for r in runs if r.scorecard]
    if not with_card:
        return empty("no scorecard.json (set eval.tasks to score the tuned model against its base)")
    if len(with_card) == 1:
        return _scorecard_single(with_card[0])
    return _scorecard_compare(with_card)


def pick_axes(runs: list[RunData]) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(specialty (task, metric), versatility (task, metric)) shared by every scorecard; KL is left out."""
    common = None
    for run in runs:
        keys = {(h["task"], h["metric"]): h["role"] for h in headline(run.scorecard) if h["metric"] != "kl_to_base"}
        common = keys if common is None else {k: v for k, v in common.items() if k in keys}
    common = common or {}
    spec = next((k for k, role in common.items() if role == "specialty"), None)
    vers = next((k for k, role in common.items() if role == "versatility"), None)
    return spec, vers


def section_tradeoff(runs: list[RunData]) -> str:
    runs = [r for r in runs if r.scorecard]
    if not runs:
        return empty("no scorecard to place runs on (set eval.tasks with a specialty and a versatility task)")
    spec, vers = pick_axes(runs)
    if spec is None or vers is None:
        return empty("needs one specialty and one versatility headline metric scored in every compared run")

    def find(run, key):
        return next(h for h in headline(run.scorecard) if (h["task"], h["metric"]) == key)

    def ci(h):
        c = h.get("ci95")
        if h["base"] is None or not c or c[0] is None:
            return None
        return (h["base"] + c[0], h["base"] + c[1])

    points, bases = [], {}
    for run in runs:
        hs, hv = find(run, spec), find(run, vers)
        origin = (hv["base"], hs["base"]) if hs["base"] is not None and hv["base"] is not None else None
        if origin is not None and origin not in bases:
            bases[origin] = svg.Point("base", *origin, base=True)
        points.append(svg.Point(run.name, hv["model"], hs["model"], x_ci=ci(hv), y_ci=ci(hs), origin=origin))
    if len(bases) > 1:  # runs from different bases: name each base by its first run
        for origin, p in bases.items():
            p.label = "base of " + next(q.label for q in points if q.origin == origin)
    points = list(bases.values()) + points
    first = runs[0]
    hv0 = find(first, vers)
    arrow = "lower is better" if not hv0.get("higher_is_better", True) else "higher is better"
    hs0 = find(first, spec)
    sarrow = "lower is better" if not hs0.get("higher_is_better", True) else "higher is better"
    plot = svg.tradeoff_plot(
        points,
        x_label=f"versatility: {vers[0]} {vers[1]} ({arrow})",
        y_label=f"specialty: {spec[0]} {spec[1]} ({sarrow})",
        log_x=vers[1] == "perplexity" and _wide_range(p.x for p in points),
    )
    note = (
        '<p class="sub">Each dot is a model; whiskers are the 95% confidence intervals of the change '
        "against the base, placed at base + change; the arrow goes from the base to each tuned model.</p>"
    )
    return card("specialty against versatility", plot) + note


CONTROL = {c: "\ufffd" for c in range(32) if chr(c) not in "\n\t"} | {0x7F: "\ufffd"}


def _clip(text: str, n: int = 700) -> str:
    """The last ``n`` characters; control characters (not valid in HTML) shown as U+FFFD."""
    text = text.translate(CONTROL)
    return text if len(text) <= n else "…" + text[-n:]


def section_samples(runs: list[RunData]) -> str:
    parts = []
    for run in runs:
        if len(runs) > 1:
            parts.append(f"<h3>{escape(run.name)}</h3>")
        if not run.samples:
            parts.append(
                empty("no samples.jsonl (written when the run has held-out eval records and eval.samples > 0)")
            )
            continue
        rows = [
            "".join(
                f"<td><pre>{escape(_clip(str(s[k])))}</pre></td>" if s.get(k) else '<td class="empty">(empty)</td>'
                for k in ("prompt", "reference", "before", "after")
            )
            for s in run.samples
        ]
        parts.append(
            table(
                ["prompt (as the model saw it)", "reference (trained tokens)", "before training", "after training"],
                rows,
                cls="samples",
            )
        )
    return "".join(parts)


# ------------------------------------------------------------------------------------------ the page


TITLES = {
    "overview": "Overview",
    "config": "Config",
    "data": "Data",
    "training": "Training curves",
    "evals": "Task scores during training",
    "scorecard": "Scorecard: base vs tuned",
    "tradeoff": "Specialty / versatility",
    "samples": "Sample generations",
}
BUILDERS = {
    "overview": section_overview,
    "config": section_config,
    "data": section_data,
    "training": section_training,
    "evals": section_evals,
    "scorecard": section_scorecard,
    "tradeoff": section_tradeoff,
    "samples": section_samples,
}


def build_report(runs: list[RunData], title: str | None = None) -> str:
    """The whole page as a string."""
    title = title or ("sftlab run " + runs[0].name if len(runs) == 1 else f"sftlab: {len(runs)} runs compared")
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#{s}">{escape(TITLES[s])}</a>' for s in SECTIONS)
    body = "".join(f'<section id="{s}"><h2>{escape(TITLES[s])}</h2>{BUILDERS[s](runs)}</section>' for s in SECTIONS)
    sources = ", ".join(escape(short_path(r.path)) for r in runs)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f'<body><main><h1>{escape(title)}</h1><p class="sub">made by sftlab {__version__} on {made} from '
        f"{sources}</p><nav>{nav}</nav>{body}</main></body></html>\n"
    )


def default_out(paths: list[Path]) -> Path:
    """RUN/report.html for one run; for several, report.html in their common parent folder."""
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0] / "report.html"
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) / "report.html"


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the runs, render the page, write it atomically; returns the path written."""
    paths = [Path(p) for p in paths]
    runs = [load_run(p) for p in paths]
    _unique_names(runs)
    out = Path(out) if out else default_out(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(build_report(runs), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _unique_names(runs: list[RunData]) -> None:
    """Two runs called ``run`` in different folders get their parent folder in the name."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.name}"
