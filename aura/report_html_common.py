"""What the optimizer's and the backtest's report.html share: escaping, number formats, tables, colours and one
inline-SVG line chart.

Both pages are single self-contained files (no script, no external file) whose bytes depend only on their
inputs: every number goes through a fixed format and nothing reads the clock.  The defaults of ``line_chart``
draw the optimizer's small growth-of-1 charts exactly as they were drawn before the backtest shared them; the
options (log scale, axis ticks, shaded spans, trade markers) are what the backtest's larger charts add.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The head of both pages' style sheets; each page appends its own classes.
BASE_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def num(x: Any, fmt: str = ".4f") -> str:
    """``x`` in ``fmt``; n/a for None, NaN and infinities (JSON turned them into null)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def pct(x: Any) -> str:
    """A return as a signed percentage."""
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def table(head: list[str], rows: list[list[str]], left: int = 1, text_last: bool = False,
          row_attrs: Sequence[str] | None = None) -> str:
    """Numbers right-aligned; the first ``left`` columns (and the last, if it is text) left-aligned.  Cells are
    HTML already (callers escape text); ``row_attrs`` adds attributes to each body row (a class, an id)."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left or (text_last and i == len(head) - 1) else ""

    th = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head))
    attrs = row_attrs if row_attrs is not None else [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r, a in zip(rows, attrs, strict=True))
    return f"<table><tr>{th}</tr>{body}</table>"


def heat_color(t: float) -> str:
    """Low (red) to high (green) through pale yellow; NaN grey."""
    if not math.isfinite(t):
        return "#dddddd"
    t = min(1.0, max(0.0, t))
    r, g, b = (int(215 + (250 - 215) * 2 * t), int(48 + (240 - 48) * 2 * t), int(39 + (170 - 39) * 2 * t)) \
        if t < 0.5 else (int(250 - (250 - 26) * 2 * (t - .5)), int(240 - (240 - 150) * 2 * (t - .5)),
                         int(170 - (170 - 65) * 2 * (t - .5)))
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Marker:
    """A point drawn over a chart: a triangle up (``up``) or down at curve position ``index``, height ``value``."""

    index: float  # fractional when the curves are a sample of the bars
    value: float
    color: str
    up: bool
    title: str  # the tooltip


def line_chart(curves: Mapping[str, np.ndarray], colors: Mapping[str, str], *, width: int = 340, height: int = 190,
               left: int = 30, bottom: int | None = None, dashed: Collection[str] = (), baseline: float | None = 1.0,
               log: bool = False, y_range: tuple[float, float] | None = None, y_ticks: Sequence[float] = (),
               y_fmt: str = ".2f", x_ticks: Sequence[tuple[float, str]] = (),
               spans: Sequence[tuple[float, float, str]] = (), markers: Sequence[Marker] = (),
               widths: Mapping[str, float] | None = None) -> str:
    """Curves of values over the same positions (NaN: a gap), on one shared scale.

    ``baseline``: a faint horizontal line at that value; ``log``: a log y scale (values must be positive);
    ``y_range``: fixed bounds instead of the data's (an exposure is 0..100 whatever it reached);
    ``y_ticks``: labelled horizontal grid lines instead of the bare min/max labels; ``x_ticks``: (position,
    label) vertical grid lines; ``spans``: (first, last, colour) shaded bands behind the curves; ``markers``:
    triangles over them.  With none of these options it is the optimizer's growth-of-1 chart, unchanged.
    """
    bottom = left if bottom is None else bottom
    plot_w, plot_h = width - left - 5, height - bottom - 5
    tf = np.log if log else np.asarray
    finite = [tf(c[np.isfinite(c)]) for c in curves.values()]
    lo = min(float(np.min(c)) for c in finite if len(c))
    hi = max(float(np.max(c)) for c in finite if len(c))
    if y_range is not None:
        lo, hi = float(tf(y_range[0])), float(tf(y_range[1]))
    hi = hi if hi > lo else lo + 1e-9
    n = max(len(c) for c in curves.values())
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="5" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>']

    def y(v: float) -> float:
        return 5 + plot_h * (1 - (float(tf(v)) - lo) / (hi - lo))

    def x(i: float) -> float:
        return left + plot_w * i / max(1, n - 1)

    for first, last, color in spans:
        parts.append(f'<rect x="{x(first):.1f}" y="5" width="{max(0.5, x(last) - x(first)):.1f}" height="{plot_h}" '
                     f'fill="{color}" stroke="none"/>')
    for i, label in x_ticks:
        parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="5" y2="{5 + plot_h}" stroke="#eee"/>'
                     f'<text x="{x(i):.1f}" y="{5 + plot_h + 14}" font-size="10" text-anchor="middle">{esc(label)}'
                     "</text>")
    for v in y_ticks:
        parts.append(f'<line x1="{left}" x2="{width - 5}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y(v) + 3:.1f}" font-size="10" text-anchor="end">'
                     f"{format(v, y_fmt)}</text>")
    if baseline is not None:
        yb = y(baseline)
        parts.append(f'<line x1="{left}" x2="{width - 5}" y1="{yb:.1f}" y2="{yb:.1f}" stroke="#eee"/>')
    for name, c in curves.items():
        for run in _finite_runs(c):
            xs = left + plot_w * run / max(1, n - 1)
            pts = " ".join(f"{a:.1f},{y(float(b)):.1f}" for a, b in zip(xs, c[run], strict=True))
            dash = ' stroke-dasharray="4 3"' if name in dashed else ""
            stroke = (widths or {}).get(name, 1.5)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colors.get(name, "#000")}" '
                         f'stroke-width="{stroke}"{dash}><title>{esc(name)}</title></polyline>')
    for m in markers:
        cx, cy = x(m.index), y(m.value)
        # (base, apex) heights: up points at the curve from below, down from above (SVG y grows downwards).
        base, apex = (cy + 7, cy + 1) if m.up else (cy - 7, cy - 1)
        pts = f"{cx:.1f},{apex:.1f} {cx - 4:.1f},{base:.1f} {cx + 4:.1f},{base:.1f}"
        parts.append(f'<polygon points="{pts}" fill="{m.color}" stroke="#fff" stroke-width="0.5">'
                     f"<title>{esc(m.title)}</title></polygon>")
    if not y_ticks:
        top_label, low_label = (math.exp(hi), math.exp(lo)) if log else (hi, lo)
        parts.append(f'<text x="2" y="12" font-size="10">{format(top_label, y_fmt)}</text>'
                     f'<text x="2" y="{height - bottom}" font-size="10">{format(low_label, y_fmt)}</text>')
    legend = " ".join(f'<tspan fill="{colors.get(k, "#000")}">{esc(k)}</tspan>' for k in curves)
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{legend}</text></svg>')
    return "".join(parts)


def _finite_runs(c: np.ndarray) -> list[np.ndarray]:
    """Index runs of consecutive finite values: a gap in a series is a gap in its line, not a straight jump."""
    idx = np.flatnonzero(np.isfinite(c))
    if len(idx) == len(c):
        return [np.arange(len(c))]
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    return list(np.split(idx, breaks))
