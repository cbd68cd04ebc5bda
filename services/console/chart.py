"""The dashboard's series, computed from what the bus carries: pure functions, tested without a browser.

Equity is the journal's own: the newest signed snapshot carries the last points of the journal's equity history
with their commit times.  The chart draws each point at the *market* time of the cycle that committed it (the
close of the bar the cycle traded), so a replay of 2019 lines up with BTC, SPY and gold in 2019 instead of
piling up on the minute it was replayed.  A point whose cycle is no bar (the genesis, a risk tick's exit) sits
just after the point before it.  Benchmarks are what 1 unit of equity put into BTC, SPY or gold at the first
point would be worth, each valued with the last close known at the point's time (never a later one).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aura.backtest.metrics import US_CLOSE_MS
from shared.cycles import as_of_of_cycle

Point = dict[str, float]  # {"time": unix seconds, "value": ...}: what lightweight-charts takes


@dataclass(frozen=True)
class PriceSeries:
    """Closes of one asset, each with the time (ms) from which it is known."""

    known_at_ms: Sequence[int]
    close: Sequence[float]

    def at(self, t_ms: int) -> float | None:
        i = bisect.bisect_right(self.known_at_ms, t_ms) - 1
        return float(self.close[i]) if i >= 0 else None


def candle_series(open_ms: Sequence[int], close: Sequence[float], bar_ms: int) -> PriceSeries:
    """A crypto pair's closes from the candle panel: each known at its bar's close."""
    pairs = [(int(t) + bar_ms, float(c)) for t, c in zip(open_ms, close, strict=True) if c == c and c > 0]
    return PriceSeries([t for t, _ in pairs], [c for _, c in pairs])


def daily_benchmark_series(label_ms: Sequence[int], close: Sequence[float]) -> PriceSeries:
    """An ETF's daily closes (SPY, gold): the session labelled D is known from D 21:00 UTC (aura.backtest.metrics)."""
    return PriceSeries([int(t) + US_CLOSE_MS for t in label_ms], [float(c) for c in close])


def point_times_ms(commit_ms: Sequence[int], cycle_of_commit: Mapping[int, str], bar_ms: int) -> list[int]:
    """Strictly increasing market times (ms, whole seconds) of the equity points committed at ``commit_ms``."""
    bar_close: list[int | None] = []
    for ms in commit_ms:
        as_of = as_of_of_cycle(cycle_of_commit.get(int(ms), ""))
        bar_close.append(None if as_of is None else as_of + bar_ms)
    first = next((i for i, x in enumerate(bar_close) if x is not None), None)
    out: list[int] = []
    for i, known in enumerate(bar_close):
        if known is not None:
            t = known
        elif out:
            t = out[-1] + 1000
        elif first is not None:  # leading points without a bar (the genesis): a bar apart before the first one
            t = int(bar_close[first] or 0) - bar_ms * (first - i)
        else:
            t = int(commit_ms[i])
        t -= t % 1000
        if out and t <= out[-1]:
            t = out[-1] + 1000
        out.append(t)
    return out


def drawdown(equity: Sequence[float]) -> list[float]:
    """Fall from the running peak, as a negative fraction (0 at a new high)."""
    out, peak = [], 0.0
    for value in equity:
        peak = max(peak, value)
        out.append(value / peak - 1.0 if peak > 0 else 0.0)
    return out


def relative(series: PriceSeries, times_ms: Sequence[int], base_equity: float) -> list[Point]:
    """``series`` as the equity it would have made from ``base_equity``, from the first point it is known at."""
    out: list[Point] = []
    start: float | None = None
    for t in times_ms:
        price = series.at(t)
        if price is None:
            continue
        if start is None:
            start = price
        out.append({"time": t // 1000, "value": round(base_equity * price / start, 6)})
    return out


def equity_chart(equity: Sequence[float], commit_ms: Sequence[int], cycle_of_commit: Mapping[int, str],
                 bar_ms: int, benchmarks: Mapping[str, PriceSeries]) -> dict[str, object]:
    """Everything the page's two charts draw: equity, its drawdown, and each benchmark on the same times."""
    times = point_times_ms(commit_ms, cycle_of_commit, bar_ms)
    points = [{"time": t // 1000, "value": float(v)} for t, v in zip(times, equity, strict=True)]
    dd = [{"time": t // 1000, "value": round(100.0 * d, 4)} for t, d in zip(times, drawdown(equity), strict=True)]
    base = float(equity[0]) if len(equity) else 0.0
    return {"equity": points, "drawdown": dd,
            "benchmarks": {name: relative(series, times, base) for name, series in benchmarks.items()},
            "commit_ms": [int(ms) for ms in commit_ms]}
