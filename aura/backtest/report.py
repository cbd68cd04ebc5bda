"""Report PNG: equity against buy-and-hold BTC, SPY and gold (log scale), drawdowns underneath."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from aura.backtest.metrics import drawdown

_COLORS = {"strategy": "#1f4e9c", "BTC": "#f2a900", "SPY": "#2e8b57", "GOLD": "#b8860b"}


def write_report(path: Path, close_ms: np.ndarray, equity: np.ndarray, benchmarks: dict[str, np.ndarray | None],
                 title: str, subtitle: str) -> None:
    """One PNG; deterministic bytes (no timestamp metadata) so reruns are byte-identical."""
    dates = (close_ms.astype("datetime64[ms]")).astype("O")
    fig, (ax, ax_dd) = plt.subplots(2, 1, figsize=(12, 8), sharex=True, height_ratios=(3, 1),
                                    constrained_layout=True)
    ax.plot(dates, equity, color=_COLORS["strategy"], lw=1.6, label="strategy")
    for name, series in benchmarks.items():
        if series is not None:
            ax.plot(dates, series, color=_COLORS.get(name, "grey"), lw=1.0, alpha=0.9, label=f"buy & hold {name}")
    if np.all(equity > 0):
        ax.set_yscale("log")
    ax.set_ylabel("equity (USDT, log scale)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title(f"{title}\n{subtitle}", fontsize=10, loc="left")
    ax_dd.fill_between(dates, -100 * drawdown(equity), 0, color=_COLORS["strategy"], alpha=0.35, label="strategy")
    btc = benchmarks.get("BTC")
    if btc is not None:
        ax_dd.plot(dates, -100 * drawdown(btc), color=_COLORS["BTC"], lw=0.8, label="BTC")
    ax_dd.set_ylabel("drawdown (%)")
    ax_dd.grid(True, alpha=0.25)
    ax_dd.legend(loc="lower left", frameon=False, fontsize=8)
    ax_dd.xaxis.set_major_locator(mdates.AutoDateLocator())
    ax_dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax_dd.xaxis.get_major_locator()))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
