"""Performance metrics, and buy-and-hold benchmarks aligned to the crypto bars without lookahead.

Returns are per bar of the run (the first one against the initial capital).  Crypto trades every day, so a
year is 365 days of bars.  Benchmarks use the same bars: BTC from the panel's closes; SPY and gold from
their daily closes, each made known only from the moment it exists.  An equity bar labelled date D is
the session that closes at about 21:00 UTC on D (20:00 in US summer time; 21:00 is used as the later,
safe bound), so it becomes usable at the first crypto bar whose *close* is at or after D 21:00 UTC: for
daily crypto bars that is the bar of day D itself (it closes at D+1 00:00); weekends and US holidays carry
the last close forward (a held ETF is worth its last price; nothing is invented).

From the fills (any engine's ``Trades``): the intrabar drawdown bound, round trips and monthly returns.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from aura.backtest.engine import AT_OPEN, Trades
from aura.backtest.execution import remaining_after_sell
from aura.strategy.rebalance import R_DATA_END, REASONS, floor_to_step

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


def equity_at_lows(trades: Trades, first_bar: int, cash: np.ndarray, initial: float, low: np.ndarray,
                   marks: np.ndarray) -> np.ndarray:
    """Per run bar: the book with every position held through the bar marked at the bar's low.

    Held through the bar = held after the fills at its open (stops, fills at the close and ``data_end`` sales
    happen later in the bar, at prices at or above its low, so marking those positions at the low as well only
    deepens the bound).  Cash is the cash after the open fills.  A symbol without a low in a bar is marked at its
    last close (``marks``).  ``low`` and ``marks`` are the run's rows (T_run, N); fills are replayed from
    ``trades``, so any engine's result will do.
    """
    run_len, n = low.shape
    d_open = np.zeros((run_len, n))
    d_later = np.zeros((run_len, n))
    cash_open = np.concatenate([[initial], cash[:-1]]) if run_len else np.zeros(0)
    for bar, sym, side, qty, px, fee, _reason, at in trades.rows():
        i = bar - first_bar
        if at == AT_OPEN:
            d_open[i, sym] += side * qty
            cash_open[i] += qty * px - fee if side < 0 else -(qty * px + fee)
        else:
            d_later[i, sym] += side * qty
    held = np.cumsum(d_open + d_later, axis=0) - d_later
    price = np.where(low > 0, low, marks)
    return cash_open + np.nansum(np.where(np.abs(held) > 1e-12, held * price, 0.0), axis=1)


def intrabar_drawdown(equity: np.ndarray, equity_low: np.ndarray, initial: float) -> np.ndarray:
    """Per bar, the drawdown of the low-marked book from the highest close (or the initial capital) before it.

    A bound on the true drawdown of the book between closes, deeper than close-to-close: every position is
    assumed at its low at the same moment.  Peaks are closes, never intrabar highs (a path through a high then a
    low inside one bar is not modelled)."""
    if len(equity) == 0:
        return np.zeros(0)
    peak = np.maximum.accumulate(np.concatenate([[initial], equity]))[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, np.maximum(0.0, 1.0 - equity_low / peak), 0.0)


def leaves_dust(rest: float, price: float, step: float, min_qty: float, min_notional: float) -> bool:
    """Whether ``rest`` coins, left after a sell at ``price``, are dust: no sell order the market accepts could
    take them (lot-floored they are nothing or below the minimum quantity, or worth less than the minimum
    notional at that price).  It is ``rebalance_core``'s test for a full exit turned around: what the strategy
    can no longer sell is no longer a position, however many satoshis the books still hold."""
    lots = floor_to_step(rest, step) if step > 0 else rest
    return lots <= 0 or lots < min_qty or lots * price < min_notional


def balance(qty: float) -> float:
    """``qty`` to 8 decimals, the precision of an exchange balance (and of the executor's books): finer than that
    a remainder is float noise, not dust."""
    return round(qty, 8) + 0.0  # + 0.0: never -0.0


def round_trips(trades: Trades, symbols: tuple[str, ...], steps: np.ndarray, bar_time: np.ndarray, first_bar: int,
                bar_ms: int, final_marks: np.ndarray, min_qty: np.ndarray | None = None,
                min_notional: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Flat-to-flat positions from the fills, in the order they close (open ones last, marked at the end).

    A trip opens with a buy on a flat symbol and closes with the sell that leaves it flat, adds and trims in
    between.  Flat is the engines' own rule (``execution.remaining_after_sell``: less than half a lot left is
    nothing) or dust (``leaves_dust`` by ``steps``, ``min_qty`` and ``min_notional`` per column, zero when not
    given): a venue that takes its fee in the coin bought leaves a sliver below the lot step after every full
    exit, and a trip that could never close would swallow every later one.  The dust left is the trip's
    ``dust`` (coins the books still hold, bought within the trip's cost, never sold); a later buy starts a new
    trip that carries it, and should it ever be sold on its own (its price rose past the minimum notional, the
    backtest's end of data) that sale is the proceeds of the trip that left it.
    Prices are quantity-weighted averages, slippage included; cost and proceeds include the fees, and so does the
    P&L.  A fill's time is its bar's open for fills at the open and its close otherwise (intrabar stops included:
    when inside the bar is not known).  ``steps``: lot step per column; ``bar_time``: open time (ms) per run bar;
    ``final_marks``: last close per column (an open trip is valued there, without fee or slippage).
    """
    no_rule = np.zeros(len(symbols))
    min_qty = no_rule if min_qty is None else min_qty
    min_notional = no_rule if min_notional is None else min_notional
    open_trips: dict[int, dict[str, Any]] = {}
    dusty: dict[int, dict[str, Any]] = {}  # per column, the closed trip whose dust the books still hold
    hold: dict[int, float] = {}
    closed: list[dict[str, Any]] = []
    for bar, sym, side, qty, px, fee, reason, at in trades.rows():
        at_ms = int(bar_time[bar - first_bar]) + (0 if at == AT_OPEN else bar_ms)
        trip = open_trips.get(sym)
        if trip is None and side < 0:
            trip = dusty.get(sym)
            if trip is None:
                continue  # nothing held: cannot happen in a run that starts flat
            trip["fills"] += 1
            _sold(trip, qty, px, fee)
            flat = reason == R_DATA_END or remaining_after_sell(hold[sym], qty, float(steps[sym])) == 0.0
            hold[sym] = 0.0 if reason == R_DATA_END else max(0.0, hold[sym] - qty)
            trip["dust"] = balance(hold[sym])
            if flat:
                dusty.pop(sym)
            continue
        if trip is None:
            dusty.pop(sym, None)  # its dust is now part of the new trip's coins
            trip = open_trips[sym] = {"symbol": symbols[sym], "entry_ms": at_ms, "bought": 0.0, "bought_at": 0.0,
                                      "cost": 0.0, "sold": 0.0, "sold_at": 0.0, "proceeds": 0.0, "fills": 0,
                                      "dust": 0.0}
        trip["fills"] += 1
        if side > 0:
            trip["bought"] += qty
            trip["bought_at"] += qty * px
            trip["cost"] += qty * px + fee
            hold[sym] = hold.get(sym, 0.0) + qty
            continue
        _sold(trip, qty, px, fee)
        step = float(steps[sym])
        # The coins left are kept as they are (not rounded to the lot): a sliver below the lot is real, the books
        # hold it, and a later trip carries it.
        noise = reason == R_DATA_END or remaining_after_sell(hold[sym], qty, step) == 0.0
        hold[sym] = 0.0 if reason == R_DATA_END else max(0.0, hold[sym] - qty)
        if noise or leaves_dust(hold[sym], px, step, float(min_qty[sym]), float(min_notional[sym])):
            trip.update(exit_ms=at_ms, reason=REASONS[reason], dust=balance(hold[sym]))
            closed.append(open_trips.pop(sym))
            if trip["dust"] > 0.0:
                dusty[sym] = trip
    out = [_close_trip(t, t["exit_ms"], t["reason"], bar_ms, False) for t in closed]
    end_ms = int(bar_time[-1]) + bar_ms if len(bar_time) else 0
    for sym in sorted(open_trips):
        trip = open_trips[sym]
        left = hold[sym]
        trip["proceeds"] += left * float(final_marks[sym])  # marked, not sold: no fee, no slippage
        trip["sold_at"] += left * float(final_marks[sym])
        trip["sold"] += left
        out.append(_close_trip(trip, end_ms, "open", bar_ms, True))
    return out


def _sold(trip: dict[str, Any], qty: float, px: float, fee: float) -> None:
    trip["sold"] += qty
    trip["sold_at"] += qty * px
    trip["proceeds"] += qty * px - fee


def _close_trip(trip: dict[str, Any], exit_ms: int, reason: str, bar_ms: int, is_open: bool) -> dict[str, Any]:
    pnl = trip["proceeds"] - trip["cost"]
    return {
        "symbol": trip["symbol"], "entry_time": trip["entry_ms"], "exit_time": exit_ms,
        "entry_price": trip["bought_at"] / trip["bought"] if trip["bought"] > 0 else math.nan,
        "exit_price": trip["sold_at"] / trip["sold"] if trip["sold"] > 0 else math.nan,
        "qty": trip["bought"], "cost": trip["cost"], "proceeds": trip["proceeds"], "pnl": pnl,
        "return": pnl / trip["cost"] if trip["cost"] > 0 else math.nan,
        "holding_bars": (exit_ms - trip["entry_ms"]) / bar_ms, "fills": trip["fills"], "exit_reason": reason,
        "open": is_open, "dust": 0.0 if is_open else trip["dust"],
    }


def round_trip_stats(trips: list[dict[str, Any]]) -> dict[str, Any]:
    closed = [t for t in trips if not t["open"]]
    pnl = np.array([t["pnl"] for t in closed])
    held = np.array([t["holding_bars"] for t in closed])
    return {
        "closed": len(closed), "open": len(trips) - len(closed),
        "win_rate": float(np.mean(pnl > 0)) if len(pnl) else math.nan,
        "mean_pnl": float(np.mean(pnl)) if len(pnl) else math.nan,
        "median_holding_bars": float(np.median(held)) if len(held) else math.nan,
        "mean_holding_bars": float(np.mean(held)) if len(held) else math.nan,
    }


def monthly_returns(bar_open_ms: np.ndarray, equity: np.ndarray, initial: float) -> dict[str, float]:
    """Return per calendar month (UTC, by bar open time): its last equity over the previous month's last (the
    initial capital for the first month, which may be partial)."""
    out: dict[str, float] = {}
    prev = initial
    months = [datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m") for ms in bar_open_ms]
    for i, month in enumerate(months):
        if i + 1 == len(months) or months[i + 1] != month:
            out[month] = float(equity[i] / prev - 1.0) if prev > 0 else math.nan
            prev = float(equity[i])
    return out
