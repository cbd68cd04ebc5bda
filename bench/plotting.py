"""Plots for the benchmarks: comparison bars and latency distributions, written as PNG files.

Figures that people compare across machines and runs read faster as a picture than as a JSON line, so every
bench whose results are compared draws one after it has measured (never inside a timed section).

matplotlib is imported inside the drawing functions, not at the top: a bench imports this module with its own
imports, and some of them time their imports (optimize_speed's coordinator_imports_s, backtest_speed's compile
subprocess), which must not pay for matplotlib.  Drawing uses the Agg canvas directly (no pyplot): no display
is needed and no global figure state is left behind.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"  # gitignored; backtest_speed's JSON lives here too

# Okabe-Ito: distinct for colour-blind readers.  Target/reference lines are black and dashed, so they never
# look like one of the series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")


def add_plot_args(parser: argparse.ArgumentParser, name: str) -> None:
    """``--plot PATH`` (default bench/results/<name>.png) and ``--no-plot``: one spelling for every bench."""
    parser.add_argument("--plot", type=Path, default=RESULTS / f"{name}.png", metavar="PATH",
                        help=f"where to write the PNG (default: bench/results/{name}.png)")
    parser.add_argument("--no-plot", action="store_true", help="draw no plot")


def plot_path(args: argparse.Namespace) -> Path | None:
    """The PNG to write, or None when ``--no-plot`` was given."""
    return None if args.no_plot else Path(args.plot)


def machine_note(extra: str = "") -> str:
    """One line for under a title: when and where it was measured, since the figures depend on both."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), platform.node() or "?",
             f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}", f"load {load:.1f}"]
    return " · ".join([*parts, extra] if extra else parts)


@dataclass(frozen=True)
class Bars:
    """One panel of bars.

    ``series`` maps a series name to one value per label; None is "not measured" (no bar, "not run" instead).
    With one series every bar gets its own colour and there is no legend (the labels say what each bar is);
    with several, a series keeps its colour across labels and a legend names them.
    """

    title: str
    labels: Sequence[str]
    series: Mapping[str, Sequence[float | None]]
    unit: str
    fmt: str | None = None  # how a value is written on its bar; None: thousands with commas, small ones 3 digits
    reference: float | None = None  # a target or peer, drawn as a dashed line across the panel
    reference_label: str = ""
    log: bool | None = None  # None: logarithmic when the values span more than LOG_SPAN (else the small vanish)


LOG_SPAN = 20.0


def _format(fmt: str | None, value: float) -> str:
    if fmt is not None:
        return fmt.format(value)
    # 2.93 combinations/s must not print as "3", nor 2,119 evaluations/s as "2.12e+03"; large values are read
    # faster as "226k" or "1.89M" than as six or seven digits.
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e5:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ticks(top: float) -> Any:
    """A linear axis' tick labels up to ``top``, all in one unit: 1.5M, 250k or 2,000, rather than matplotlib's
    1e6 offset above the axis (easily missed) or a 5,000 beside a 10k."""
    from matplotlib.ticker import FuncFormatter

    scale, suffix = (1e6, "M") if top >= 1e6 else (1e3, "k") if top >= 2e4 else (1.0, "")
    return FuncFormatter(lambda v, _pos: f"{v / scale:,g}{suffix}" if v else "0")


def _use_log(panel: Bars) -> bool:
    if panel.log is not None:
        return panel.log
    values = [v for vs in panel.series.values() for v in vs if v is not None and v > 0]
    return len(values) > 1 and max(values) / min(values) > LOG_SPAN


def _draw_bars(ax: Any, panel: Bars) -> None:
    import numpy as np

    x = np.arange(len(panel.labels))
    n = len(panel.series)
    width = 0.8 / n
    log = _use_log(panel)
    for s, (name, values) in enumerate(panel.series.items()):
        offsets = x - 0.4 + width * (s + 0.5)
        colors = [PALETTE[i % len(PALETTE)] for i in range(len(values))] if n == 1 \
            else [PALETTE[s % len(PALETTE)]] * len(values)
        drawn = [i for i, v in enumerate(values) if v is not None]
        if drawn:  # only the measured bars: a hidden one would blank the series' legend entry
            bars = ax.bar(offsets[drawn], [values[i] for i in drawn], width * 0.92, color=[colors[i] for i in drawn],
                          label=name if n > 1 else None, edgecolor="black", linewidth=0.5)
            ax.bar_label(bars, labels=[_format(panel.fmt, values[i]) for i in drawn], padding=2, fontsize=9)
        for i, v in enumerate(values):
            if v is None:  # at the foot of the axis, whatever its scale
                ax.annotate("not run", (offsets[i], 0.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8, color="#444444")
    ax.set_xlim(-0.5, len(panel.labels) - 0.5)  # every label's slot, measured or not
    if log:
        ax.set_yscale("log")
        ax.margins(y=0.25)  # room for the value labels above the tallest bar
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    if panel.reference is not None:
        ax.axhline(panel.reference, color="black", linestyle="--", linewidth=1.2, zorder=3)
        # Outside the right spine, level with the line: inside, it would collide with a bar or its value
        # wherever a bar ends near the line (constrained layout makes room for it).
        ax.annotate(panel.reference_label or _format(panel.fmt, panel.reference), (1.0, panel.reference),
                    xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                    ha="left", va="center", fontsize=9)
        top = ax.get_ylim()[1]
        if panel.reference >= top:  # keep the line in view
            ax.set_ylim(top=panel.reference * (2.0 if log else 1.12))
    if not log:  # after the reference line may have raised the top
        ax.yaxis.set_major_formatter(_ticks(ax.get_ylim()[1]))
    ax.set_xticks(x, list(panel.labels), fontsize=9)
    ax.set_ylabel(panel.unit + (" (log scale)" if log else ""))
    ax.set_title(panel.title, fontsize=11)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    if n > 1:
        ax.legend(fontsize=9, loc="best", framealpha=0.9)


def _figure(title: str, note: str, widths: Sequence[float], height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

    # Wide enough for the panels and for the title and note on one line each (about 0.12 in per character of
    # the 13 pt bold title, 0.07 of the 8.5 pt note): a clipped title loses what is compared.
    width = max(sum(widths), 0.12 * len(title), 0.07 * len(note))
    fig = Figure(figsize=(width, height), layout="constrained")
    # The title keeps an empty second line, which constrained layout reserves, and the note is written into
    # it: smaller and grey under the bold title (one suptitle cannot mix sizes).
    sup = fig.suptitle(title + ("\n" if note else ""), fontsize=13, fontweight="bold")
    if note:
        fig.add_artist(Annotation(note, (0.5, 0.0), xycoords=sup, ha="center", va="bottom", fontsize=8.5,
                                  color="#444444"))
    axes = fig.subplots(1, len(widths), squeeze=False, width_ratios=widths)[0]
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def bar_panels(path: Path, title: str, panels: Sequence[Bars], note: str = "") -> Path:
    """One figure of ``panels`` side by side under ``title`` (what is compared), ``note`` at the bottom."""
    # Each panel as wide as its bars need, so that two-line labels under them do not run into each other.
    widths = [max(4.5, 1.5 + 1.1 * len(p.labels) * len(p.series)) for p in panels]
    fig, axes = _figure(title, note, widths, 4.8)
    for ax, panel in zip(axes, panels, strict=True):
        _draw_bars(ax, panel)
    return _save(fig, path)


def sample_percentile(values: Sequence[float], q: float) -> float:
    """The benches' percentile: the sorted sample at index round(q/100 * (n - 1)), no interpolation (always a
    latency that was measured); a marked p99 is the reported p99."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_cdf(path: Path, title: str, samples: Mapping[str, Sequence[float]], unit: str = "ms",
                note: str = "") -> Path:
    """Empirical CDFs of latency samples (one step curve per series), p50 and p99 of each marked and written.

    A CDF rather than a histogram: it needs no bin width (the sample counts range from 2 in a smoke run to
    hundreds), and any percentile is read straight off it.  p50 is the median and p99 ``sample_percentile``, as the
    benches report them.
    """
    import numpy as np

    fig, (ax,) = _figure(title, note, [8.0], 4.8)
    # p50 and p99 are where a curve crosses these two guides; the values go in the legend, which has room for
    # several series where labels beside the markers would run into each other.
    for y, name in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(y, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(name, (0.0, y), xycoords=("axes fraction", "data"), xytext=(3, 2), textcoords="offset points",
                    fontsize=8, color="#444444")
    for s, (name, values) in enumerate(samples.items()):
        if not values:
            continue
        color = PALETTE[s % len(PALETTE)]
        xs = np.sort(np.asarray(values, dtype=float))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        p50, p99 = statistics.median(values), sample_percentile(values, 99)
        ax.step(xs, ys, where="post", color=color, linewidth=1.8,
                label=f"{name} (n={len(xs)}): p50 {p50:,.1f} {unit}, p99 {p99:,.1f} {unit}")
        ax.plot(xs, ys, "o", color=color, markersize=2.5, alpha=0.6)
        for v, y, marker, style in ((p50, 0.5, "o", ":"), (p99, 0.99, "D", "--")):
            ax.axvline(v, color=color, linestyle=style, linewidth=1, alpha=0.8)
            ax.plot([v], [y], marker, color=color, markersize=7, markeredgecolor="black", zorder=4)
    ax.set_xlabel(f"latency ({unit})")
    ax.set_ylabel("fraction of cycles at or below")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    return _save(fig, path)
