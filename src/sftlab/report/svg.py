"""Hand-written SVG charts for the report: line charts, stacked histograms, interval rows, a trade-off plot.

Plain strings, no plotting library and no script: the report opens anywhere, offline. Every data series
carries its values as JSON in ``data-x`` / ``data-y`` attributes (what was plotted, before the pixel
mapping), so tests and readers can check a chart against the numbers it was drawn from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
GREY = "#8a8f98"
VERDICT_COLORS = {"better": "#2e8b57", "worse": "#d1495b"}
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="11"'
MAX_POINTS = 2000  # longer series are thinned (every k-th point, the last one kept) before drawing


@dataclass
class Series:
    """One line on a chart; ``None`` / non-finite values in ``y`` break the line."""

    label: str
    x: list[float]
    y: list[float | None]
    color: str | None = None
    dashed: bool = False
    markers: bool = False  # a dot at every value (few values, e.g. eval loss)
    width: float = 1.6


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def nice_step(span: float, target: int = 5) -> float:
    """A 1 / 2 / 5 x 10^k step giving about ``target`` intervals over ``span``.

    >>> nice_step(1.0), nice_step(730), nice_step(0.013)
    (0.2, 200.0, 0.005)
    """
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag * 1.0000001:
            return float(round(m * mag, 12))
    return float(10 * mag)


def nice_range(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """(lo, hi, ticks) widened to whole steps.

    >>> nice_range(0.13, 0.92)
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    """
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, target)
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    n = int(round((end - start) / step))
    ticks = [round(start + i * step, 12) for i in range(n + 1)]
    return ticks[0], ticks[-1], ticks


def log_range(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """(lo, hi, ticks) on a log axis: whole powers of ten around the data (plus 2 and 5 when few).

    >>> log_range(3.2, 870)
    (1.0, 1000.0, [1.0, 10.0, 100.0, 1000.0])
    """
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    ticks = [10.0**k for k in range(a, b + 1)]
    if b - a <= 2:
        ticks = sorted(t * m for t in ticks[:-1] for m in (1, 2, 5)) + [ticks[-1]]
    return ticks[0], ticks[-1], ticks


def format_number(v: float | None, digits: int = 4) -> str:
    """Short human form: 4 significant digits, thousands separators for large values, '-' for None.

    >>> format_number(0.70757), format_number(277818.14), format_number(3e-4), format_number(None)
    ('0.7076', '277,818', '0.0003', '-')
    """
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else str(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if v != 0 and abs(v) >= 10**digits:
        return f"{v:,.0f}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.{digits - 1}g}" if abs(v) < 1e-4 else f"{v:.4f}".rstrip("0")
    return f"{v:.{digits}g}"


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


class Scale:
    """Data -> pixels on one axis (linear or log10)."""

    def __init__(self, lo: float, hi: float, px0: float, px1: float, log: bool = False):
        self.lo, self.hi, self.px0, self.px1, self.log = lo, hi, px0, px1, log

    def __call__(self, v: float) -> float:
        f = (lambda z: math.log10(z)) if self.log else (lambda z: z)
        span = f(self.hi) - f(self.lo) or 1.0
        return self.px0 + (f(v) - f(self.lo)) / span * (self.px1 - self.px0)


def thin(x: list, y: list, max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point so that at most ``max_points`` remain; the last point is always kept."""
    if len(x) <= max_points:
        return list(x), list(y)
    k = math.ceil(len(x) / max_points)
    idx = list(range(0, len(x), k))
    if idx[-1] != len(x) - 1:
        idx.append(len(x) - 1)
    return [x[i] for i in idx], [y[i] for i in idx]


def _json_attr(values) -> str:
    return escape(json.dumps([v if is_number(v) else None for v in values]), quote=True)


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}" {FONT}>'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>'
    )


def _legend(items: list[tuple[str, str, bool]], x: float, y: float) -> str:
    """Legend entries (label, colour, dashed) in one row from (x, y), right-aligned at x."""
    out, cursor = [], x
    for label, color, dashed in reversed(items):
        w = 24 + 6.2 * len(label)
        cursor -= w
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{cursor:.1f}" y1="{y - 4}" x2="{cursor + 16:.1f}" y2="{y - 4}" stroke="{color}" '
            f'stroke-width="2.5"{dash}/><text x="{cursor + 20:.1f}" y="{y}" fill="#333">{escape(label)}</text>'
        )
    return "".join(out)


def _axes(
    xs: Scale,
    ys: Scale,
    xticks,
    yticks,
    x_label: str,
    y_label: str,
    left: float,
    top: float,
    right: float,
    bottom: float,
) -> str:
    out = []
    for t in yticks:
        py = ys(t)
        out.append(
            f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#e6e8eb"/>'
            f'<text x="{left - 6}" y="{py + 3.5:.1f}" text-anchor="end" fill="#555">{_tick_label(t)}</text>'
        )
    for t in xticks:
        px = xs(t)
        out.append(
            f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 4}" stroke="#999"/>'
            f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#555">{_tick_label(t)}</text>'
        )
    out.append(
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>'
    )
    out.append(
        f'<text x="{(left + right) / 2:.1f}" y="{bottom + 32}" text-anchor="middle" fill="#333">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text x="{14}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" fill="#333" '
        f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})">{escape(y_label)}</text>'
    )
    return "".join(out)


def _range(values: list[float], log: bool) -> tuple[float, float, list[float]]:
    lo, hi = min(values), max(values)
    return log_range(lo, hi) if log else nice_range(lo, hi)


def line_chart(
    series: list[Series],
    *,
    x_label: str,
    y_label: str,
    width: int = 580,
    height: int = 260,
    log_y: bool = False,
    marks: list[tuple[float, str]] = (),
    zero: bool = False,
) -> str:
    """Lines (and dots) of several series on shared axes; a legend when there is more than one series.

    ``marks``: labelled vertical lines at x positions (e.g. where a training stage starts); ``zero``: the
    y axis starts at 0 (linear axes).
    """
    series = [s for s in series if any(is_number(v) for v in s.y)]
    if not series:
        return '<p class="empty">no values to plot</p>'
    left, top, right, bottom = 64, 26, width - 14, height - 42
    xs_all = [x for s in series for x, y in zip(s.x, s.y) if is_number(y) and is_number(x)]
    ys_all = [y for s in series for y in s.y if is_number(y) and (y > 0 or not log_y)]
    log_y = log_y and bool(ys_all) and min(ys_all) > 0
    if zero and not log_y:
        ys_all.append(0.0)
    x0, x1, xticks = nice_range(min(xs_all), max(xs_all))
    y0, y1, yticks = _range(ys_all, log_y)
    xs, ys = Scale(x0, x1, left, right), Scale(y0, y1, bottom, top, log=log_y)
    out = [
        _svg_open(width, height, f"{y_label} by {x_label}"),
        _axes(xs, ys, xticks, yticks, x_label, y_label, left, top, right, bottom),
    ]
    for x, label in marks:
        if is_number(x) and x0 <= x <= x1:
            out.append(
                f'<line class="mark" x1="{xs(x):.1f}" y1="{top}" x2="{xs(x):.1f}" y2="{bottom}" stroke="{GREY}" '
                f'stroke-dasharray="2 3"/><text x="{xs(x) + 3:.1f}" y="{top + 10}" fill="#555">{escape(label)}</text>'
            )
    legend = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        px, py = thin(s.x, s.y)
        out.append(
            f'<g class="series" data-label="{escape(s.label, quote=True)}" data-x="{_json_attr(px)}" '
            f'data-y="{_json_attr(py)}">'
        )
        runs, cur = [], []
        for x, y in zip(px, py):
            if is_number(y) and is_number(x) and (y > 0 or not log_y):
                cur.append(f"{xs(x):.1f},{ys(y):.1f}")
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for r in runs:
            if len(r) > 1:
                out.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="{s.width}"{dash} '
                    f'stroke-linejoin="round" points="{" ".join(r)}"/>'
                )
        if s.markers or all(len(r) == 1 for r in runs):
            for x, y in zip(px, py):
                if is_number(y) and is_number(x) and (y > 0 or not log_y):
                    out.append(
                        f'<circle cx="{xs(x):.1f}" cy="{ys(y):.1f}" r="3" fill="{color}">'
                        f"<title>{escape(s.label)}: {format_number(y)} at {format_number(x)}</title></circle>"
                    )
        out.append("</g>")
        legend.append((s.label, color, s.dashed))
    if len(series) > 1:
        out.append(_legend(legend, right, 14))
    out.append("</svg>")
    return "".join(out)


def stacked_histogram(
    edges: list[float],
    counts: dict[str, list[int]],
    *,
    x_label: str,
    y_label: str = "records",
    width: int = 580,
    height: int = 240,
) -> str:
    """Bars over ``edges`` (len = bins + 1), one colour per key of ``counts``, stacked."""
    if not edges or not counts or not any(sum(c) for c in counts.values()):
        return '<p class="empty">no values to plot</p>'
    left, top, right, bottom = 64, 26, width - 14, height - 42
    totals = [sum(c[i] for c in counts.values()) for i in range(len(edges) - 1)]
    y0, y1, yticks = nice_range(0, max(totals))
    x0, x1, xticks = nice_range(edges[0], edges[-1])
    xs, ys = Scale(x0, x1, left, right), Scale(0, y1, bottom, top)
    out = [
        _svg_open(width, height, f"{y_label} by {x_label}"),
        _axes(xs, ys, xticks, yticks, x_label, y_label, left, top, right, bottom),
    ]
    base = [0] * (len(edges) - 1)
    legend = []
    for k, (name, c) in enumerate(counts.items()):
        color = PALETTE[k % len(PALETTE)]
        out.append(
            f'<g class="series" data-label="{escape(name, quote=True)}" data-x="{_json_attr(edges[:-1])}" '
            f'data-y="{_json_attr(c)}">'
        )
        for i, n in enumerate(c):
            if n:
                xa, xb = xs(edges[i]), xs(edges[i + 1])
                ya, yb = ys(base[i] + n), ys(base[i])
                out.append(
                    f'<rect x="{xa + 0.5:.1f}" y="{ya:.1f}" width="{max(xb - xa - 1, 1):.1f}" '
                    f'height="{max(yb - ya, 0.5):.1f}" fill="{color}"><title>{escape(name)}: {n:,} '
                    f"records of {edges[i]:g}-{edges[i + 1]:g}</title></rect>"
                )
                base[i] += n
        out.append("</g>")
        legend.append((name, color, False))
    if len(counts) > 1:
        out.append(_legend(legend, right, 14))
    out.append("</svg>")
    return "".join(out)


@dataclass
class IntervalRow:
    """One metric: the base value, the model value and the 95% CI of the model value (base + CI of the change)."""

    label: str
    base: float | None
    model: float
    lo: float | None = None
    hi: float | None = None
    verdict: str | None = None
    log: bool = False


def interval_rows(rows: list[IntervalRow], *, width: int = 580, row_height: int = 46) -> str:
    """Each metric on its own axis: grey dot = base, coloured dot = model, bar = 95% CI, arrow base -> model."""
    if not rows:
        return '<p class="empty">no values to plot</p>'
    height = 24 + row_height * len(rows)
    left, right = 210, width - 24
    out = [_svg_open(width, height, "scorecard: base and model per metric")]
    out.append(
        f'<circle cx="{left}" cy="12" r="4" fill="{GREY}"/><text x="{left + 8}" y="16" fill="#333">base</text>'
        f'<circle cx="{left + 60}" cy="12" r="4" fill="{PALETTE[0]}"/><text x="{left + 68}" y="16" '
        f'fill="#333">tuned (bar: 95% CI, base + CI of the change)</text>'
    )
    for i, r in enumerate(rows):
        cy = 24 + row_height * i + row_height / 2 - 4
        vals = [v for v in (r.base, r.model, r.lo, r.hi) if is_number(v) and (v > 0 or not r.log)]
        log = r.log and bool(vals) and min(vals) > 0
        lo, hi, ticks = _range(vals, log)
        xs = Scale(lo, hi, left, right, log=log)
        color = VERDICT_COLORS.get(r.verdict or "", PALETTE[0])
        data = {"base": r.base, "model": r.model, "lo": r.lo, "hi": r.hi}
        out.append(
            f'<g class="series" data-label="{escape(r.label, quote=True)}" '
            f'data-y="{escape(json.dumps(data), quote=True)}">'
        )
        out.append(f'<text x="{left - 12}" y="{cy + 4:.1f}" text-anchor="end" fill="#222">{escape(r.label)}</text>')
        out.append(f'<line x1="{left}" y1="{cy + 14:.1f}" x2="{right}" y2="{cy + 14:.1f}" stroke="#ccc"/>')
        for t in (ticks[0], ticks[-1]) if len(ticks) > 1 else ticks:
            out.append(
                f'<text x="{xs(t):.1f}" y="{cy + 25:.1f}" text-anchor="middle" fill="#777" '
                f'font-size="9.5">{_tick_label(t)}</text>'
            )
        if is_number(r.lo) and is_number(r.hi) and (not log or (r.lo > 0 and r.hi > 0)):
            out.append(
                f'<line x1="{xs(r.lo):.1f}" y1="{cy:.1f}" x2="{xs(r.hi):.1f}" y2="{cy:.1f}" stroke="{color}" '
                f'stroke-width="6" stroke-opacity="0.35" stroke-linecap="round"/>'
            )
        if is_number(r.base) and (not log or r.base > 0):
            bx, mx = xs(r.base), xs(r.model)
            if abs(mx - bx) > 10:
                tip = mx - 7 if mx > bx else mx + 7
                out.append(
                    f'<line x1="{bx:.1f}" y1="{cy:.1f}" x2="{tip:.1f}" y2="{cy:.1f}" stroke="{GREY}" '
                    f'stroke-width="1.2"/>'
                )
            out.append(
                f'<circle cx="{bx:.1f}" cy="{cy:.1f}" r="5" fill="{GREY}"><title>base {format_number(r.base)}'
                f"</title></circle>"
            )
        out.append(
            f'<circle cx="{xs(r.model):.1f}" cy="{cy:.1f}" r="5.5" fill="{color}"><title>tuned '
            f"{format_number(r.model)}</title></circle></g>"
        )
    out.append("</svg>")
    return "".join(out)


@dataclass
class Point:
    label: str
    x: float
    y: float
    x_ci: tuple[float, float] | None = None
    y_ci: tuple[float, float] | None = None
    base: bool = False  # a base model (grey, no arrow)
    origin: tuple[float, float] | None = None  # (x, y) of this model's base: the arrow starts there


def tradeoff_plot(
    points: list[Point], *, x_label: str, y_label: str, log_x: bool = False, width: int = 580, height: int = 360
) -> str:
    """Specialty (y) against versatility (x): one dot per model, CI whiskers, an arrow from the base to each."""
    pts = [p for p in points if is_number(p.x) and is_number(p.y)]
    if not pts:
        return '<p class="empty">no values to plot</p>'
    left, top, right, bottom = 70, 30, width - 20, height - 44
    xv = [v for p in pts for v in (p.x, *(p.x_ci or ())) if is_number(v) and (v > 0 or not log_x)]
    yv = [v for p in pts for v in (p.y, *(p.y_ci or ())) if is_number(v)]
    log_x = log_x and min(xv) > 0
    x0, x1, xticks = _range(xv, log_x)
    y0, y1, yticks = nice_range(min(yv), max(yv))
    xs, ys = Scale(x0, x1, left, right, log=log_x), Scale(y0, y1, bottom, top)
    out = [
        _svg_open(width, height, f"{y_label} against {x_label}"),
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{GREY}"/></marker></defs>',
        _axes(xs, ys, xticks, yticks, x_label, y_label, left, top, right, bottom),
    ]
    k = 0
    for p in pts:
        color = GREY if p.base else PALETTE[k % len(PALETTE)]
        k += 0 if p.base else 1
        data = {"x": p.x, "y": p.y, "x_ci": p.x_ci, "y_ci": p.y_ci, "base": p.base}
        out.append(
            f'<g class="series" data-label="{escape(p.label, quote=True)}" '
            f'data-y="{escape(json.dumps(data), quote=True)}">'
        )
        cx, cy = xs(p.x), ys(p.y)
        if not p.base and p.origin and all(is_number(v) for v in p.origin) and (p.origin[0] > 0 or not log_x):
            bx, by = xs(p.origin[0]), ys(p.origin[1])
            if math.hypot(cx - bx, cy - by) > 14:
                f = 1 - 8 / math.hypot(cx - bx, cy - by)
                out.append(
                    f'<line x1="{bx:.1f}" y1="{by:.1f}" x2="{bx + (cx - bx) * f:.1f}" '
                    f'y2="{by + (cy - by) * f:.1f}" stroke="{GREY}" stroke-width="1.2" '
                    f'marker-end="url(#arrow)"/>'
                )
        if p.x_ci and all(is_number(v) and (v > 0 or not log_x) for v in p.x_ci):
            out.append(
                f'<line x1="{xs(p.x_ci[0]):.1f}" y1="{cy:.1f}" x2="{xs(p.x_ci[1]):.1f}" y2="{cy:.1f}" '
                f'stroke="{color}" stroke-width="2"/>'
            )
        if p.y_ci and all(is_number(v) for v in p.y_ci):
            out.append(
                f'<line x1="{cx:.1f}" y1="{ys(p.y_ci[0]):.1f}" x2="{cx:.1f}" y2="{ys(p.y_ci[1]):.1f}" '
                f'stroke="{color}" stroke-width="2"/>'
            )
        out.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{color}"><title>{escape(p.label)}: '
            f"{format_number(p.y)}, {format_number(p.x)}</title></circle>"
        )
        anchor = "end" if cx > (left + right) / 2 else "start"
        dx = -10 if anchor == "end" else 10
        ty = cy + 18 if p.base else cy - 8  # base labels below their dot, model labels above
        out.append(
            f'<text x="{cx + dx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="#222">{escape(p.label)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
