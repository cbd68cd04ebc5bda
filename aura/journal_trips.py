"""The journal's round trips (``aura trades``): its fills through the backtest's matcher.

Round trips are the backtest's own (``aura.backtest.metrics.round_trips``): the journal's fills are adapted into
its ``Trades`` input, so a live trip and a backtested trip are matched, priced and charged by the same rule.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np

# Lot step handed to the round-trip matcher: what is left of a position below half of it is nothing.  The
# executor's books keep 8 decimals (a holding is one when it rounds to >= 1e-8), so half of 1e-8 is the same line.
BOOKS_STEP = 1e-8


@dataclass(frozen=True)
class JournalFill:
    ts_ms: int
    symbol: str
    side: str  # "buy" | "sell" | "adopt"
    qty: float
    price: float
    fee_base: float
    fee_quote: float
    reason: str  # the plan leg's reason ("enter", "stop_loss"...); "" when the fill belongs to no plan leg


def journal_fills(db: sqlite3.Connection) -> list[JournalFill]:
    """Every fill in journal order, with the reason of the plan leg it executed (intent -> plan body)."""
    rows = db.execute(
        "SELECT f.ts_ms, f.symbol, f.side, f.qty, f.price, f.fee_base, f.fee_quote, i.plan_id, i.leg_index"
        " FROM fills f LEFT JOIN intents i ON i.client_order_id = f.client_order_id ORDER BY f.rowid").fetchall()
    legs: dict[str, dict[int, str]] = {}
    out = []
    for ts, symbol, side, qty, price, fee_base, fee_quote, plan_id, leg_index in rows:
        if plan_id is not None and plan_id not in legs:
            legs[plan_id] = leg_reasons(db, plan_id)
        reason = legs.get(plan_id or "", {}).get(leg_index, "")
        out.append(JournalFill(int(ts), symbol, side, float(qty), float(price), float(fee_base), float(fee_quote),
                               reason))
    return out


def leg_reasons(db: sqlite3.Connection, plan_id: str) -> dict[int, str]:
    """leg index -> reason, from the plan body the executor journaled (canonical JSON of the signed plan)."""
    row = db.execute("SELECT body FROM plans WHERE plan_id=?", (plan_id,)).fetchone()
    try:
        legs = json.loads(row[0]).get("legs", []) if row else []
        return {int(leg["index"]): str(leg["reason"]) for leg in legs}
    except (ValueError, AttributeError, KeyError, TypeError):  # not the executor's JSON: no reasons, no crash
        return {}


# --- round trips ----------------------------------------------------------------------------------------------------


def round_trips_from_fills(fills: list[JournalFill], marks: dict[str, float], as_of_ms: int) -> list[dict[str, Any]]:
    """Round trips of ``fills`` by ``aura.backtest.metrics.round_trips``; open ones valued at ``marks`` (NaN P&L
    where a symbol has no mark).  Times are the fills' own: one "bar" per fill, a bar lasting 1 ms."""
    from aura.backtest.engine import AT_OPEN, Trades
    from aura.backtest.metrics import round_trips
    from aura.strategy.rebalance import R_DATA_END, R_ENTER, R_EXIT, REASONS

    symbols = tuple(sorted({f.symbol for f in fills if "/" in f.symbol}))  # adopted quote cash is no position
    column = {s: j for j, s in enumerate(symbols)}
    trades, times = Trades(), []
    for f in fills:
        if f.symbol not in column:
            continue
        buy = f.side == "buy" or (f.side == "adopt" and f.qty > 0)  # an adoption moves coins at its price, no fee
        qty = abs(f.qty)
        # The matcher counts coins held and money spent; a fee taken from the coins changes the coins (fewer
        # bought, more sold) and is charged at the fill's price, so cost and proceeds are exactly the cash moved.
        coins = qty - f.fee_base if buy else qty + f.fee_base
        fee = f.fee_quote + f.fee_base * f.price
        code = REASONS.index(f.reason) if f.reason in REASONS else (R_ENTER if buy else R_EXIT)
        if code == R_DATA_END:  # the backtest's end-of-data close; nothing live is one
            code = R_EXIT
        trades.add(len(times), column[f.symbol], 1 if buy else -1, coins, f.price, fee, code, AT_OPEN)
        times.append(f.ts_ms)
    times.append(as_of_ms)  # open trips end here (plus the 1 ms "bar")
    final = np.array([marks.get(s, math.nan) for s in symbols], dtype=float)
    trips = round_trips(trades, symbols, np.full(len(symbols), BOOKS_STEP), np.array(times, dtype=np.int64), 0, 1,
                        final)
    for trip in trips:
        trip["holding_ms"] = int(trip.pop("holding_bars"))
        if trip["open"]:
            trip["exit_time"] = None
    return trips


def trips_summary(trips: list[dict[str, Any]]) -> dict[str, Any]:
    from aura.backtest.metrics import round_trip_stats

    stats = round_trip_stats([{**t, "holding_bars": t["holding_ms"]} for t in trips])  # "bars" of 1 ms here
    realized = sum(t["pnl"] for t in trips if not t["open"])
    return {"closed": stats["closed"], "open": stats["open"], "win_rate": stats["win_rate"],
            "mean_pnl": stats["mean_pnl"], "realized_pnl": realized,
            "median_holding_h": stats["median_holding_bars"] / 3_600_000}


def held_for(ms: int) -> str:
    minutes = ms // 60_000
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}d {hours}h" if days else f"{hours}h {mins}m" if hours else f"{mins}m"
