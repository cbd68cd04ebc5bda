"""``aura trades`` and ``aura pnl [--daily]``: what the executor's journal says was traded and earned.

The journal is opened read-only (an SQLite ``mode=ro`` URI): only the executor writes it, and a report must
never take its write lock or change a byte of it.  It is visible where the executor runs (``aura up`` on this
AURA_HOME, or inside the executor's container); elsewhere these commands say so in one line.

Round trips are the backtest's own matcher on the journal's fills (``aura.journal_trips``: fee dust, the bar
clock).  Every time on these screens is the bar a cycle traded, named by its open as the cycle ids and
``aura status`` name it: never the minute a replay ran, nor this machine's clock.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aura.cli_types import int_at_least
from shared.read_only import connect_read_only

T = TypeVar("T")


class JournalUnavailable(RuntimeError):
    """The journal is not visible from here, or cannot be read: said in one line."""


def open_journal(path: Path) -> sqlite3.Connection:
    """The journal, read-only; JournalUnavailable if it is not there or not readable."""
    if not path.is_file():
        raise JournalUnavailable(f"no journal at {path} (it is visible where the executor runs: `aura up` on this "
                                 "AURA_HOME, or the executor's container)")
    try:
        db = connect_read_only(path, timeout=2)
        db.execute("SELECT 1 FROM snapshots LIMIT 1")
    except sqlite3.Error as exc:
        raise JournalUnavailable(f"journal {path} unreadable: {exc}") from None
    return db


def utc(ms: int | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(fmt) if ms else "-"


def clean(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no NaN, and a script should not have to guess."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


# --- the journal's rows --------------------------------------------------------------------------------------


def equity_points(db: sqlite3.Connection) -> list[tuple[str, str, float, int]]:
    """(cycle_id, status, equity, committed_ts_ms) of every snapshot, oldest first."""
    return [(str(c), str(s), float(e), int(t)) for c, s, e, t in db.execute(
        "SELECT cycle_id, status, equity, committed_ts_ms FROM snapshots ORDER BY seq").fetchall()]


# --- daily P&L -----------------------------------------------------------------------------------------------------


def daily_pnl(points: list[tuple[str, str, float, int]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per UTC day: the equity the day ended on, its change from the day before (the first day: from the
    first snapshot, the genesis capital) and the cycles it held; and the totals.

    A point's day is that of the bar its cycle traded, by the bar's open: the day in its cycle id and in
    ``aura status`` (cycle ``1d-20190125T0000``, "bar 2019-01-25 00:00", is 2019-01-25, although its orders go
    out at that bar's close on the 26th).  In a replay that is the market's day, not the minute it was
    replayed.  A point without a bar of its own goes with the bar in force (``journal_trips.cycle_bars``): the
    genesis starts the first bar's day, a risk tick is booked with the bar before it.  Only a journal with no
    bar cycle at all falls back to the days the snapshots were committed."""
    from aura.journal_trips import cycle_bars

    if not points:
        return [], {"days": 0, "cycles": 0, "pnl": 0.0, "return": math.nan, "start_equity": math.nan,
                    "end_equity": math.nan}
    bars = cycle_bars([p[0] for p in points])
    times = [b if b is not None else p[3] for p, b in zip(points, bars, strict=True)]
    rows: list[dict[str, Any]] = []
    before = points[0][2]
    for (_, status, equity, _), t in zip(points, times, strict=True):
        day = utc(t, "%Y-%m-%d")
        if not rows or rows[-1]["day"] != day:
            start = rows[-1]["end_equity"] if rows else before
            rows.append({"day": day, "start_equity": start, "end_equity": equity, "cycles": 0})
        rows[-1]["end_equity"] = equity
        rows[-1]["cycles"] += status != "genesis"
    for row in rows:
        row["pnl"] = row["end_equity"] - row["start_equity"]
        row["return"] = row["pnl"] / row["start_equity"] if row["start_equity"] > 0 else math.nan
    end = rows[-1]["end_equity"]
    totals = {"days": len(rows), "cycles": sum(r["cycles"] for r in rows), "pnl": sum(r["pnl"] for r in rows),
              "return": end / before - 1.0 if before > 0 else math.nan, "start_equity": before, "end_equity": end}
    return rows, totals


# --- the commands ----------------------------------------------------------------------------------------------------


def _money(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+,.2f}" if signed else f"{x:,.2f}"


def _pct(x: float | None) -> str:
    return f"{x * 100:+.2f}%" if x is not None and math.isfinite(x) else "-"


def colored(x: float | None, text: str) -> str:
    """``text`` in green for a gain, red for a loss (rich markup); as is for nothing or zero."""
    if x is None or not math.isfinite(x) or x == 0:
        return text
    return f"[{'green' if x > 0 else 'red'}]{text}[/]"


def make_console(width: int = 140) -> Any:
    from rich.console import Console

    # Piped or captured output gets a fixed width: rich's 80-column default would fold the tables.
    return Console(width=None if sys.stdout.isatty() else width)


def read_journal(path: Path, read: Callable[[sqlite3.Connection], T], prog: str) -> T | None:
    """``read`` on the journal opened read-only; None after saying in one line why it could not be read."""
    try:
        db = open_journal(path)
        try:
            return read(db)
        finally:
            db.close()
    except (JournalUnavailable, sqlite3.Error) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def run_trades(args: argparse.Namespace) -> int:
    from rich.table import Table

    from aura.journal_trips import (
        DustRules,
        held_for,
        journal_clock,
        journal_fills,
        round_trips_from_fills,
        trips_summary,
    )
    from shared.config import settings_for_command

    settings = settings_for_command("aura trades")
    if settings is None:
        return 2
    read = read_journal(settings.journal_path, lambda db: (journal_fills(db), journal_clock(db)), "aura trades")
    if read is None:
        return 1
    fills, clock = read
    trips = round_trips_from_fills(fills, {}, clock, DustRules.for_settings(settings))
    summary = trips_summary(trips, clock.now_ms)
    shown = trips[-args.limit:] if args.limit > 0 else trips
    if args.json:
        print(json.dumps(clean({"trips": shown, "summary": summary}), indent=2, sort_keys=True))
        return 0
    table = Table(title=f"Round trips (journal {settings.journal_path}; entry and exit: the bars the cycles traded, "
                  "UTC; open trips: held of bought, and the P&L their partial exits realized; the rest in "
                  "`aura status`)")
    for name in ("symbol", "entry bar", "exit bar", "qty", "entry px", "exit px", "P&L", "return", "held",
                 "exit reason", "dust"):
        table.add_column(name, justify="left" if name in ("symbol", "entry bar", "exit bar", "exit reason")
                         else "right", no_wrap=name in ("entry bar", "exit bar"))
    for t in shown:
        pnl = t["realized"] if not t["open"] or t["held"] < t["qty"] else None
        qty = f"{t['held']:.8g} of {t['qty']:.8g}" if t["open"] and t["held"] < t["qty"] else f"{t['qty']:.8g}"
        table.add_row(t["symbol"], utc(t["entry_time"]), "open" if t["open"] else utc(t["exit_time"]), qty,
                      f"{t['entry_price']:.8g}",
                      "-" if t["open"] else f"{t['exit_price']:.8g}", colored(pnl, _money(pnl, True)),
                      "-" if t["open"] else _pct(t["return"]), held_for(t["holding_ms"]),
                      "open" if t["open"] else t["exit_reason"], f"{t['dust']:.8g}" if t["dust"] > 0 else "-")
    console = make_console(160)  # eleven columns: at 140 the bars would fold
    console.print(table)
    win, median_h = summary["win_rate"], summary["median_holding_h"]
    console.print(f"{summary['closed']} closed, {summary['open']} open; realized P&L "
                  f"{_money(summary['realized_pnl'], True)} USDT; win rate "
                  f"{f'{win * 100:.0f}%' if math.isfinite(win) else '-'}; median holding "
                  f"{held_for(int(median_h * 3_600_000)) if math.isfinite(median_h) else '-'}; open trips held up "
                  f"to bar {utc(summary['as_of'])} (the newest cycle's)")
    if summary["dust"]:
        # Not a position (no order could sell it), not dropped either: the books hold it.
        console.print("dust left where trips closed (below the market's minimum order; in the books, in no trip): "
                      + ", ".join(f"{q:.8g} {s}" for s, q in summary["dust"].items()))
    return 0


def run_pnl(args: argparse.Namespace) -> int:
    from rich.table import Table

    from shared.config import settings_for_command

    settings = settings_for_command("aura pnl")
    if settings is None:
        return 2
    points = read_journal(settings.journal_path, equity_points, "aura pnl")
    if points is None:
        return 1
    rows, totals = daily_pnl(points)
    shown = rows[-args.days:] if args.daily and args.days > 0 else rows if args.daily else []
    if args.json:
        print(json.dumps(clean({"daily": shown, "totals": totals}), indent=2, sort_keys=True))
        return 0
    console = make_console()
    if args.daily:
        table = Table(title="Daily P&L (UTC days of the bars the cycles traded; journal snapshots)")
        for name in ("day", "cycles", "start equity", "end equity", "P&L", "return"):
            table.add_column(name, justify="left" if name == "day" else "right")
        for r in shown:
            table.add_row(r["day"], str(r["cycles"]), _money(r["start_equity"]), _money(r["end_equity"]),
                          colored(r["pnl"], _money(r["pnl"], True)), _pct(r["return"]))
        if len(shown) < len(rows):
            table.caption = f"the last {len(shown)} of {len(rows)} days (--days); totals over all of them"
        console.print(table)
    console.print(f"{totals['days']} days, {totals['cycles']} cycles: equity {_money(totals['start_equity'])} -> "
                  f"{_money(totals['end_equity'])} USDT, P&L {_money(totals['pnl'], True)} ({_pct(totals['return'])})")
    return 0


def add_trades_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser("trades", help="round trips from the journal: entry, exit, qty, P&L, holding time")
    p.add_argument("--limit", type=int_at_least(0), default=50,
                   help="show the last N round trips (0 = all); default 50")
    p.add_argument("--json", action="store_true", help="print JSON (every trip shown and the summary) for scripts")
    p.set_defaults(func=run_trades)
    p = subparsers.add_parser("pnl", help="equity and P&L from the journal's snapshots, in total or per UTC day")
    p.add_argument("--daily", action="store_true", help="one row per UTC day (equity at its end, P&L, return)")
    p.add_argument("--days", type=int_at_least(0), default=30,
                   help="with --daily, show the last N days (0 = all); default 30")
    p.add_argument("--json", action="store_true", help="print JSON (the daily rows shown and the totals)")
    p.set_defaults(func=run_pnl)
