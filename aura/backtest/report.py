"""Report PNG: equity against buy-and-hold BTC, SPY and gold (log scale) with the round trips' entries and exits
marked; drawdowns (close-to-close and the intrabar bound) underneath; then the exposure over time, i.e. time in
market, with the kill-switch's halts.  Colours are report.html's (aura/backtest/report_html.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from aura.backtest.metrics import drawdown
from aura.backtest.report_html import COLORS as _COLORS
from aura.backtest.report_html import ENTRY_COLOR, EXIT_COLOR, trip_bars


def write_report(path: Path, close_ms: np.ndarray, equity: np.ndarray, benchmarks: dict[str, np.ndarray | None],
                 title: str, subtitle: str, *, exposure: np.ndarray | None = None, halted: np.ndarray | None = None,
                 drawdown_intrabar: np.ndarray | None = None, trips: list[dict[str, Any]] | None = None,
                 open_ms: np.ndarray | None = None) -> None:
    """One PNG; deterministic bytes (no timestamp metadata) so reruns are byte-identical."""
    dates = (close_ms.astype("datetime64[ms]")).astype("O")
    with_exposure = exposure is not None
    fig, axes = plt.subplots(3 if with_exposure else 2, 1, figsize=(12, 10 if with_exposure else 8), sharex=True,
                             height_ratios=(3, 1, 1) if with_exposure else (3, 1), constrained_layout=True)
    ax, ax_dd = axes[0], axes[1]
    ax.plot(dates, equity, color=_COLORS["strategy"], lw=1.6, label="strategy")
    for name, series in benchmarks.items():
        if series is not None:
            ax.plot(dates, series, color=_COLORS.get(name, "grey"), lw=1.0, alpha=0.9, label=f"buy & hold {name}")
    if np.all(equity > 0):
        ax.set_yscale("log")
    if trips and open_ms is not None and len(equity):
        for up, color, marker, label in ((True, ENTRY_COLOR, "^", "entry"), (False, EXIT_COLOR, "v", "exit")):
            bars = [b for b, is_entry in trip_bars(trips, open_ms) if is_entry == up]
            if bars:
                ax.scatter([dates[b] for b in bars], equity[bars], color=color, marker=marker, s=22, zorder=3,
                           linewidths=0, label=f"round-trip {label}")
    ax.set_ylabel("equity (USDT, log scale)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title(f"{title}\n{subtitle}", fontsize=10, loc="left")
    if drawdown_intrabar is not None:
        ax_dd.plot(dates, -100 * drawdown_intrabar, color=_COLORS["strategy"], lw=0.6, alpha=0.8,
                   label="strategy, at the lows (bound)")
    ax_dd.fill_between(dates, -100 * drawdown(equity), 0, color=_COLORS["strategy"], alpha=0.35, label="strategy")
    btc = benchmarks.get("BTC")
    if btc is not None:
        ax_dd.plot(dates, -100 * drawdown(btc), color=_COLORS["BTC"], lw=0.8, label="BTC")
    ax_dd.set_ylabel("drawdown (%)")
    ax_dd.grid(True, alpha=0.25)
    ax_dd.legend(loc="lower left", frameon=False, fontsize=8)
    if exposure is not None:
        ax_x = axes[2]
        in_market = float(np.mean(exposure > 1e-9)) if len(exposure) else 0.0
        ax_x.fill_between(dates, 100 * exposure, 0, color=_COLORS["strategy"], alpha=0.5, step="post",
                          label=f"invested (time in market {in_market:.1%})")
        if halted is not None and np.any(halted):
            ax_x.fill_between(dates, 0, 100, where=halted, color="#c0392b", alpha=0.15, step="post",
                              label=f"kill-switch halted ({float(np.mean(halted)):.1%} of bars)")
        ax_x.set_ylim(0, 100)
        ax_x.set_ylabel("exposure (%)")
        ax_x.grid(True, alpha=0.25)
        ax_x.legend(loc="upper left", frameon=False, fontsize=8)
    bottom = axes[-1]
    bottom.xaxis.set_major_locator(mdates.AutoDateLocator())
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(bottom.xaxis.get_major_locator()))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
