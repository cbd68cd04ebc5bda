"""Performance metrics, and buy-and-hold benchmarks aligned to the crypto bars without lookahead.

Returns are per bar of the run (the first one against the initial capital).  Crypto trades every day, so a
year is 365 days of bars.  Benchmarks use the same bars: BTC from the panel's closes; SPY and gold from
their daily closes, each made known only from the moment it exists.  An equity bar labelled date D is
the session that closes at about 21:00 UTC on D (20:00 in US summer time; 21:00 is used as the later,
safe bound), so it becomes usable at the first crypto bar whose *close* is at or after D 21:00 UTC: for
daily crypto bars that is the bar of day D itself (it closes at D+1 00:00); weekends and US holidays carry
the last close forward (a held ETF is worth its last price; nothing is invented).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DAY_MS = 86_400_000
US_CLOSE_MS = 21 * 3_600_000  # 21:00 UTC after the label date's midnight


def bars_per_year(bar_ms: int) -> float:
    return 365.0 * DAY_MS / bar_ms


def drawdown(equity: np.ndarray) -> np.ndarray:
    if len(equity) == 0:
        return np.zeros(0)
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, 1.0 - equity / peak, 0.0)


def performance(equity: np.ndarray, initial: float, bar_ms: int) -> dict[str, float]:
    """CAGR, volatility, Sharpe, Sortino (risk-free 0), max drawdown, Calmar, total return."""
    out = {"cagr": math.nan, "volatility": math.nan, "sharpe": math.nan, "sortino": math.nan,
           "max_drawdown": math.nan, "calmar": math.nan, "total_return": math.nan, "final_equity": math.nan}
    if len(equity) == 0 or not initial > 0:
        return out
    path = np.concatenate([[initial], equity])
    rets = path[1:] / path[:-1] - 1.0
    ann = bars_per_year(bar_ms)
    years = len(equity) / ann
    total = equity[-1] / initial - 1.0
    cagr = (equity[-1] / initial) ** (1.0 / years) - 1.0 if equity[-1] > 0 and years > 0 else -1.0
    std = float(np.std(rets, ddof=1)) if len(rets) > 1 else 0.0
    mean = float(np.mean(rets))
    downside = float(np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2)))
    mdd = float(drawdown(path).max())
    out.update(
        cagr=float(cagr),
        volatility=std * math.sqrt(ann),
        sharpe=mean / std * math.sqrt(ann) if std > 0 else 0.0,
        sortino=mean / downside * math.sqrt(ann) if downside > 0 else 0.0,
        max_drawdown=mdd,
        calmar=float(cagr) / mdd if mdd > 0 else 0.0,
        total_return=float(total),
        final_equity=float(equity[-1]),
    )
    return out


def trading_stats(trade_notional: np.ndarray, fees: np.ndarray, equity: np.ndarray, exposure: np.ndarray,
                  bar_ms: int) -> dict[str, float]:
    """Annual turnover (traded notional / mean equity per year), fees paid, share of bars invested."""
    years = len(equity) / bars_per_year(bar_ms) if len(equity) else 0.0
    mean_eq = float(np.mean(equity)) if len(equity) else 0.0
    traded = float(np.sum(trade_notional))
    return {
        "turnover": traded / mean_eq / years if mean_eq > 0 and years > 0 else 0.0,
        "fees_paid": float(np.sum(fees)),
        "time_in_market": float(np.mean(exposure > 1e-9)) if len(exposure) else 0.0,
        "trades": len(fees),
        "traded_notional": traded,
    }


def align_equity_benchmark(label_ms: np.ndarray, close: np.ndarray, bar_open_ms: np.ndarray, bar_ms: int,
                           ) -> np.ndarray:
    """The benchmark close known at each crypto bar's close (NaN before its first close is known)."""
    known_at = label_ms + US_CLOSE_MS
    idx = np.searchsorted(known_at, bar_open_ms + bar_ms, side="right") - 1
    out = np.full(len(bar_open_ms), np.nan)
    ok = idx >= 0
    out[ok] = close[idx[ok]]
    return out


def buy_and_hold(prices: np.ndarray, initial: float) -> np.ndarray | None:
    """Equity of ``initial`` put into the asset at the first bar with a price, carried to the end.

    None if the asset has no price on the run's first bar: a benchmark that starts later would not cover
    the same dates, and the comparison would flatter one side.
    """
    if len(prices) == 0 or not prices[0] > 0:
        return None
    filled = prices.copy()
    for i in range(1, len(filled)):  # only a gap inside a series is carried (a close known earlier)
        if not filled[i] > 0:
            filled[i] = filled[i - 1]
    return initial * filled / prices[0]


def benchmark_block(equity: np.ndarray | None, initial: float, bar_ms: int) -> dict[str, Any]:
    if equity is None:
        return {"available": False}
    return {"available": True, **performance(equity, initial, bar_ms)}
