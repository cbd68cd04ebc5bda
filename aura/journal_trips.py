"""The journal's round trips (``aura trades``): its fills, on the bar clock, through the backtest's matcher.

Round trips are the backtest's own (``aura.backtest.metrics.round_trips``): the journal's fills are adapted into
its ``Trades`` input, so a live trip and a backtested trip are matched, priced, charged and closed by the same
rule, dust included.

**Dust.**  A venue that takes its fee in the coin bought leaves a sliver below the lot step after every full exit
(DOT bought 89.21, fee 0.08921 DOT, sold 89.12 in lots of 0.01: 0.00079 DOT stay).  The matcher calls a trip flat
when what is left could not be sold as one order (``metrics.leaves_dust``: lot step, minimum quantity, minimum
notional at the exit price), and reports what is left.  The rules it needs are not journaled: on the replay they
are the bundled ``markets.json`` (the very rules the paper venue enforces); in sync mode (live, a rehearsal, a
shadow run) they are the venue's, carried on the bus and never written to the journal, so a remainder is dust when
it is worth less than ``reconcile_dust_usdt`` at the exit price (5 USDT by default: the executor's own line for
dust, and Binance's minimum notional on USDT pairs, below which no order can sell it).  A line relative to the
position was not chosen: the sliver is up to one lot step, which is 1% of a small position in a coin traded in
whole units (0.9 DOGE of 99.9), so no ratio both closes that and keeps a real small remainder open.

**The clock.**  Times are the bars the cycles traded, named by their open, as the cycle ids and ``aura status``
name them (cycle ``1d-20210305T0000``: the bar 2021-03-05 00:00; its orders go out at that bar's close).  Fill
stamps are no clock to use: live they are the exchange's (a minute or so after that close), in a paper replay
they are the wall clock of the replay, seconds apart whatever the bars.  A fill of a cycle that is no bar (a
risk tick's exit, an adoption) is timed by the newest bar before it, the bar in force when it traded.  Open
trips are held up to the newest cycle's bar: the journal's clock, never the local one.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the commands import this module; `aura status` should not pay for the ingest code it never runs
    from aura.strategy.types import MarketRule
    from shared.config import Settings

# The lot step for a symbol without rules: the executor's books keep 8 decimals (a holding is one when it rounds
# to >= 1e-8), so what is below half of it is float noise, not a coin.
BOOKS_STEP = 1e-8


@dataclass(frozen=True)
class JournalFill:
    ts_ms: int  # the fill's own stamp (the exchange's, or the paper broker's wall clock): not the bar clock
    symbol: str
    side: str  # "buy" | "sell" | "adopt"
    qty: float
    price: float
    fee_base: float
    fee_quote: float
    reason: str  # the plan leg's reason ("enter", "stop_loss"...); "" when the fill belongs to no plan leg
    cycle_id: str = ""  # the cycle the fill traded in: its bar is the fill's time


def journal_fills(db: sqlite3.Connection) -> list[JournalFill]:
    """Every fill in journal order, with the reason of the plan leg it executed (intent -> plan body)."""
    rows = db.execute(
        "SELECT f.ts_ms, f.symbol, f.side, f.qty, f.price, f.fee_base, f.fee_quote, i.plan_id, i.leg_index,"
        " f.cycle_id FROM fills f LEFT JOIN intents i ON i.client_order_id = f.client_order_id"
        " ORDER BY f.rowid").fetchall()
    legs: dict[str, dict[int, str]] = {}
    out = []
    for ts, symbol, side, qty, price, fee_base, fee_quote, plan_id, leg_index, cycle_id in rows:
        if plan_id is not None and plan_id not in legs:
            legs[plan_id] = leg_reasons(db, plan_id)
        reason = legs.get(plan_id or "", {}).get(leg_index, "")
        out.append(JournalFill(int(ts), symbol, side, float(qty), float(price), float(fee_base), float(fee_quote),
                               reason, str(cycle_id)))
    return out


def leg_reasons(db: sqlite3.Connection, plan_id: str) -> dict[int, str]:
    """leg index -> reason, from the plan body the executor journaled (canonical JSON of the signed plan)."""
    row = db.execute("SELECT body FROM plans WHERE plan_id=?", (plan_id,)).fetchone()
    try:
        legs = json.loads(row[0]).get("legs", []) if row else []
        return {int(leg["index"]): str(leg["reason"]) for leg in legs}
    except (ValueError, AttributeError, KeyError, TypeError):  # not the executor's JSON: no reasons, no crash
        return {}


# --- the journal's clock ------------------------------------------------------------------------------------------


def cycle_bars(cycle_ids: Sequence[str]) -> list[int | None]:
    """Per cycle, in journal order, the open (ms) of the bar it traded on.

    A data cycle names its bar.  A cycle that is no bar (the genesis, a risk tick, an adoption) traded while the
    newest bar before it was the newest, so it takes that one; those before any bar take the first bar.  All None
    when no cycle is a bar."""
    from shared.cycles import as_of_of_cycle

    own = [as_of_of_cycle(c) for c in cycle_ids]
    first = next((b for b in own if b is not None), None)
    out: list[int | None] = []
    newest = None
    for b in own:
        if b is not None:
            newest = b if newest is None else max(newest, b)
        out.append(b if b is not None else newest if newest is not None else first)
    return out


@dataclass(frozen=True)
class JournalClock:
    bars: dict[str, int]  # cycle id -> the bar it traded on (open, ms), for every snapshot's cycle
    now_ms: int  # the newest cycle's bar; the newest commit when no cycle is a bar
    has_bars: bool

    def of_fill(self, fill: JournalFill) -> int:
        """The fill's time: its cycle's bar; a cycle not (yet) snapshotted: its own bar or the newest one; the
        fill's own stamp only in a journal where no cycle is a bar at all."""
        from shared.cycles import as_of_of_cycle

        if fill.cycle_id in self.bars:
            return self.bars[fill.cycle_id]
        own = as_of_of_cycle(fill.cycle_id)
        return own if own is not None else self.now_ms if self.has_bars else fill.ts_ms


def journal_clock(db: sqlite3.Connection) -> JournalClock:
    rows = db.execute("SELECT cycle_id, committed_ts_ms FROM snapshots ORDER BY seq").fetchall()
    bars = cycle_bars([str(c) for c, _ in rows])
    known = {str(c): b for (c, _), b in zip(rows, bars, strict=True) if b is not None}
    if known:
        return JournalClock(known, max(known.values()), True)
    return JournalClock({}, max((int(t) for _, t in rows), default=0), False)


# --- round trips ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DustRules:
    rules: Mapping[str, MarketRule]  # symbol -> the market's rules, where the journal's venue is known
    dust_usdt: float  # for a symbol without rules: a remainder worth less than this at the exit price is dust

    @classmethod
    def for_settings(cls, settings: Settings) -> DustRules:
        from services.ingest.replay import load_market_rules

        rules: dict[str, MarketRule] = {}
        if settings.ingest_source == "replay":  # the paper venue enforces the bundled rules; sync's are the venue's
            try:
                rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
            except (OSError, ValueError, TypeError):  # unreadable: every symbol falls back to the quote line
                rules = {}
        return cls(rules, settings.reconcile_dust_usdt)

    def arrays(self, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lot step, minimum quantity, minimum notional) per symbol, for ``metrics.round_trips``."""
        rule = [self.rules.get(s) for s in symbols]
        return (np.array([r.step_size if r else BOOKS_STEP for r in rule], dtype=float),
                np.array([r.min_qty if r else 0.0 for r in rule], dtype=float),
                np.array([r.min_notional if r else self.dust_usdt for r in rule], dtype=float))


def round_trips_from_fills(fills: list[JournalFill], marks: dict[str, float], clock: JournalClock,
                           dust: DustRules) -> list[dict[str, Any]]:
    """Round trips of ``fills`` by ``aura.backtest.metrics.round_trips`` on the bar clock; open ones valued at
    ``marks`` (NaN P&L where a symbol has no mark).  The matcher is handed one "bar" per fill, a bar lasting
    1 ms, at the fill's bar time, so its times come out in ms of the bar clock."""
    from aura.backtest.engine import AT_OPEN, Trades
    from aura.backtest.metrics import round_trips
    from aura.strategy.rebalance import R_DATA_END, R_ENTER, R_EXIT, REASONS

    symbols = tuple(sorted({f.symbol for f in fills if "/" in f.symbol}))  # adopted quote cash is no position
    column = {s: j for j, s in enumerate(symbols)}
    trades, times = Trades(), []
    moves: dict[str, list[tuple[float, float]]] = {}  # per symbol, per fill in order: (coins, cash: -cost / +proceeds)
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
        times.append(clock.of_fill(f))
        moves.setdefault(f.symbol, []).append((coins, -(coins * f.price + fee)) if buy else
                                              (-coins, coins * f.price - fee))
    times.append(clock.now_ms)
    final = np.array([marks.get(s, math.nan) for s in symbols], dtype=float)
    step, min_qty, min_notional = dust.arrays(symbols)
    trips = round_trips(trades, symbols, step, np.array(times, dtype=np.int64), 0, 1, final, min_qty, min_notional)
    for trip in trips:
        trip["holding_ms"] = int(trip.pop("holding_bars"))
        trip["held"], trip["realized"] = 0.0, trip["pnl"]
        if trip["open"]:  # held up to the journal's clock (the matcher adds its 1 ms "bar")
            trip["exit_time"] = None
            trip["holding_ms"] = max(0, clock.now_ms - int(trip["entry_time"]))
            # What it still holds and what its partial exits realized: an open trip showed what it bought and no
            # realized P&L while its trims had realized thousands (found by an audit).
            trip["held"], trip["realized"] = open_position(moves[trip["symbol"]][-int(trip["fills"]):])
    return trips


def open_position(moves: list[tuple[float, float]]) -> tuple[float, float]:
    """(coins held, P&L realized) after an open trip's own fills in order (the open trip is a symbol's last, so its
    fills are that symbol's last ones): each sale realizes its proceeds less the average cost of the coins held
    when it was made, never of coins bought after it."""
    held = cost = realized = 0.0
    for coins, cash in moves:
        if coins > 0:
            held, cost = held + coins, cost - cash
            continue
        sold = min(-coins, held)
        share = cost * sold / held if held > 0 else 0.0
        realized += cash - share
        held, cost = held - sold, cost - share
    return held, realized


def trips_summary(trips: list[dict[str, Any]], as_of_ms: int) -> dict[str, Any]:
    """Counts, win rate, realized P&L, median holding (h), the journal's clock, and the dust the books still
    hold (per symbol without an open trip: what its last trip left)."""
    from aura.backtest.metrics import round_trip_stats

    stats = round_trip_stats([{**t, "holding_bars": t["holding_ms"]} for t in trips])  # "bars" of 1 ms here
    realized = sum(t["realized"] for t in trips)  # closed trips' P&L and what open ones' partial exits realized
    last = {t["symbol"]: t for t in trips}  # open trips come last, so an open one wins
    dust = {s: t["dust"] for s, t in sorted(last.items()) if not t["open"] and t["dust"] > 0}
    return {"closed": stats["closed"], "open": stats["open"], "win_rate": stats["win_rate"],
            "mean_pnl": stats["mean_pnl"], "realized_pnl": realized,
            "median_holding_h": stats["median_holding_bars"] / 3_600_000, "as_of": as_of_ms, "dust": dust}


def held_for(ms: int) -> str:
    minutes = ms // 60_000
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}d {hours}h" if days else f"{hours}h {mins}m" if hours else f"{mins}m"
