"""``aura status``: the running system on one screen (``--json`` for scripts); ``aura trades`` and ``aura pnl``
are registered here too (their code is in ``aura.trades_cli``).

Read-only, from three places, each optional:

* each service's ``/readyz``: at the URLs in the run file of the `aura up` on this AURA_HOME (a default port may
  have moved there), believed only when the answer names that run's id; with no live run file, at the configured
  health ports only if AURA_NATS_URL names the system (compose, services started by hand), as the console finds
  its peers; else none.  Never a guessed default port: on a shared machine it may be another system's;
* the bus, as the operator, through the console's own reader (``services.console.view.BusView``): parameter
  version and its history, regime, kill-switch latch, newest prices, recent plans with their gate decision;
  every signed message is verified against the operator's pinned keys, as the console does with its own;
* the executor's journal opened read-only (``mode=ro``), when it is visible here (`aura up`): the books.

Positions, equity and drawdown come from the journal when it is visible (it is the record; the bus carries the
executor's signed copy), else from the newest snapshot on the bus.  The recent cycles come from the bus (it also
holds the cycles aborted before the executor), else from the journal.  A bus that cannot be read is one line on
stderr and the exit status 1; the screen still shows what the journal and the services say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import sys
import time
from typing import Any

from aura.cli_types import int_at_least
from aura.trades_cli import (
    JournalUnavailable,
    add_trades_parsers,
    clean,
    colored,
    equity_points,
    make_console,
    open_journal,
    utc,
)
from shared.config import SERVICE_NAMES, ConfigError, Settings, settings_for_command

# The bus reader starts this many messages back on each stream: the screen shows the last few cycles, and a
# one-shot command should not page through the console's whole backlog.
STATUS_BACKLOG = 200
BUS_READ_TIMEOUT_S = 10.0


async def read_bus(settings: Settings) -> tuple[Any, str]:
    """(the console's bus view after one refresh, "") or (None, why the bus could not be read, in one line)."""
    from services.console.view import BusView
    from shared.bus import BusNotProvisioned, BusUnavailable, session
    from shared.credentials import CredentialError
    from shared.health import HealthState

    try:
        async with contextlib.AsyncExitStack() as stack:
            nc = await stack.enter_async_context(session(settings, "operator"))  # bounded: one line if down
            view = BusView(nc.jetstream(), settings, HealthState(service="operator"), logging.getLogger("aura.status"),
                           holder="operator", backlog=STATUS_BACKLOG)
            await asyncio.wait_for(view.refresh(), BUS_READ_TIMEOUT_S)
            return view, ""
    except (BusUnavailable, BusNotProvisioned, CredentialError, ConfigError) as exc:
        return None, str(exc)  # ConfigError: no bus named and no `aura up` on this home, said as such
    except Exception as exc:  # a status screen degrades, it does not crash: a failed read is one line too
        return None, f"could not read the bus: {type(exc).__name__}: {exc}"


async def read_services(settings: Settings) -> tuple[dict[str, dict[str, Any]], str]:
    """Each process's /readyz answer (status ready | not ready | down, and its checks), and why none is shown when
    none is (see the module's docstring for which ports are asked)."""
    import httpx

    from services.console.service import Console, peer_url
    from shared.runfile import live_run

    run = live_run(settings.home_path)
    if run is not None:
        urls, run_id = {n: url for n, url in run.health.items() if n in SERVICE_NAMES}, run.run_id
    elif settings.nats_url:
        urls, run_id = {n: peer_url(settings, n) for n in SERVICE_NAMES}, ""
    else:
        return {}, f"no `aura up` runs on AURA_HOME={settings.home_path} (no live run file)"
    names = [n for n in SERVICE_NAMES if n in urls]
    async with httpx.AsyncClient(timeout=1.5) as client:
        answers = await asyncio.gather(*(Console._ready(client, urls[n], n, run_id) for n in names))
    return {n: {"ready": ready, "status": status, "detail": detail, "url": urls[n]}
            for n, (ready, status, detail) in zip(names, answers, strict=True)}, ""


def read_journal(settings: Settings, cycles: int) -> dict[str, Any]:
    """The newest snapshot, the drawdown over the whole equity history and the last ``cycles`` cycles."""
    from services.console.chart import drawdown

    out: dict[str, Any] = {"visible": False, "path": str(settings.journal_path), "why": ""}
    try:
        db = open_journal(settings.journal_path)
    except JournalUnavailable as exc:
        out["why"] = str(exc)
        return out
    try:
        last = db.execute("SELECT cycle_id, status, cash, holdings, entry_prices, equity, committed_ts_ms"
                          " FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
        equity = [e for _, _, e, _ in equity_points(db)]
        rows = db.execute(
            "SELECT s.cycle_id, s.status, s.equity, s.committed_ts_ms, p.gate, p.reasons, p.body FROM snapshots s"
            " LEFT JOIN plans p ON p.plan_id = s.plan_id WHERE s.status != 'genesis' ORDER BY s.seq DESC LIMIT ?",
            (cycles,)).fetchall()
    except sqlite3.Error as exc:
        out["why"] = f"journal {settings.journal_path} unreadable: {exc}"
        return out
    finally:
        db.close()
    out["visible"] = True
    if last is not None:
        out["snapshot"] = {"cycle_id": last[0], "status": last[1], "cash": float(last[2]),
                           "holdings": json.loads(last[3]), "entry_prices": json.loads(last[4]),
                           "equity": float(last[5]), "committed_at_ms": int(last[6]),
                           "drawdown": drawdown(equity)[-1], "peak": max(equity)}
    out["cycles"] = [{"cycle_id": c, "outcome": status, "gate": gate or "-", "legs": _legs(body),
                      "reasons": _json_list(reasons), "at_ms": int(at), "equity": float(eq)}
                     for c, status, eq, at, gate, reasons, body in rows]
    return out


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return [text or ""]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _legs(body: str | None) -> list[str]:
    try:
        return [f"{leg['side']} {leg['qty']:g} {leg['symbol']}" for leg in json.loads(body or "{}").get("legs", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def build_report(settings: Settings, view: Any, bus_problem: str, services: dict[str, Any],
                 journal: dict[str, Any], cycles: int, services_why: str = "") -> dict[str, Any]:
    """Everything the screen shows, as plain data (what ``--json`` prints)."""
    from services.console.view import book_exposure, position_rows

    prices: dict[str, float] = dict(view.prices) if view is not None else {}
    live = view.live_params if view is not None else None
    stop_loss = live.stop_loss if live is not None else None
    report: dict[str, Any] = {
        "as_of_ms": int(time.time() * 1000), "home": str(settings.home_path),
        "bus": {"reachable": view is not None, "why": bus_problem},
        "services": services, "services_why": services_why,
        "journal": {k: journal[k] for k in ("visible", "path", "why")},
        "params": None, "regime": None, "latch": None, "data": {}, "portfolio": None, "cycles": [],
    }
    if view is not None:
        report.update(params={**view.params, "stop_loss": stop_loss,
                              "take_profit": live.take_profit if live is not None else None},
                      regime=view.regime or None, latch=latch_report(view.latch) or None, data=view.data,
                      unverified_skipped=int(view.health.counters.get("console_unverified", 0)))
    snap = journal.get("snapshot")
    if snap is not None:
        book = {**snap, "source": "journal"}
    elif view is not None and view.snapshot is not None:
        s = view.snapshot
        book = {"cycle_id": s.cycle_id, "status": s.status, "cash": s.cash, "holdings": dict(s.holdings),
                "entry_prices": dict(s.entry_prices), "equity": s.equity, "committed_at_ms": s.committed_at_ms,
                "drawdown": view.portfolio()["drawdown"], "peak": max(*s.equity_history, s.equity),
                "source": f"bus (the executor's signed snapshot; drawdown and peak over its last "
                          f"{len(s.equity_history)} cycles)"}
    else:
        book = None
    if book is not None:
        positions, held = position_rows(book.pop("holdings"), book.pop("entry_prices"), prices)
        for p in positions:  # the level risk's stop-loss check exits at (services/risk/tick.py)
            p["stop"] = p["entry"] * (1.0 - stop_loss) if stop_loss and p["entry"] > 0 else None
        priced = all(p["price"] is not None for p in positions)
        report["portfolio"] = {**book, "positions": positions,
                               "exposure": book_exposure(book["equity"], book["cash"]),
                               "equity_marked_now": book["cash"] + held if priced else None}
    if view is not None:
        report["cycles"] = [{"cycle_id": p["cycle_id"], "gate": p["gate"],
                             "outcome": p["kind"] if p["kind"] == "aborted" else "halted" if p["halted"] else "plan",
                             "legs": p["legs"], "reasons": p["reasons"], "at_ms": p["at_ms"], "source": "bus"}
                            for p in list(view.plans)[:cycles]]
    else:
        report["cycles"] = [{**c, "source": "journal"} for c in journal.get("cycles", [])]
    return report


def latch_report(latch: dict[str, Any]) -> dict[str, Any]:
    """The console's view of the latch, told as `aura risk status` tells it: since which bar (``latched_at``), what
    latched it (``cause``) and how it clears (``clears``, the same words).  The latch's ``reason`` is no cause: it
    is the last operator reset's note (empty on a system never reset) or what did not verify."""
    if not latch.get("halted"):
        return latch
    from services.risk.cli import rearm_status
    from services.risk.latch import LatchDoc

    how = rearm_status(LatchDoc(halted=True, capped=bool(latch.get("capped")),
                                latched_at_ms=int(latch.get("latched_at_ms") or 0),
                                rearm_at_ms=int(latch.get("rearm_at_ms") or 0)))
    if latch.get("unverifiable"):  # risk fails closed on a latch it cannot verify
        cause = f"a stored latch that does not verify ({latch.get('reason') or 'no detail'})"
    elif latch.get("capped"):
        cause = "the drawdown since the last reset reached kill_switch_cap"
    else:
        cause = "the rolling drawdown reached kill_switch_drawdown"
    return {**latch, "latched_at": how.get("latched_at"), "cause": cause, "clears": how["rearm"]}


# --- the screen ------------------------------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ",.2f", signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return format(x, ("+" if signed else "") + fmt)


def _latch_rows(overview: Any, latch: dict[str, Any]) -> None:
    """The kill-switch: latched since which bar, by what, how it clears; the last reset with its note apart."""
    from rich.markup import escape

    if latch.get("halted"):
        since = f" since the bar of {latch['latched_at']}" if latch.get("latched_at") else ""
        # No cycle: no decision latched it (a latch that did not verify stands in), so no drawdown either.
        cycle = (f" (cycle {escape(latch['cycle_id'])}, drawdown {_num(100 * (latch.get('drawdown') or 0), '.1f')}%)"
                 if latch.get("cycle_id") else "")
        overview.add_row("kill-switch", f"[red]LATCHED[/]{since}{cycle}; `aura risk status`")
        overview.add_row("latched by", escape(latch["cause"]))
        overview.add_row("clears", escape(latch["clears"]))
    else:
        overview.add_row("kill-switch", "[green]armed[/]")
    if latch.get("reset_at_ms"):
        overview.add_row("last reset", escape(f"{utc(latch['reset_at_ms'], '%Y-%m-%dT%H:%MZ')} by "
                                              f"{latch.get('reset_by') or '?'}: {latch.get('reason') or '-'}"))


def render(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    bus = report["bus"]
    console.print(f"[bold]AURA status[/] {utc(report['as_of_ms'], '%Y-%m-%d %H:%M:%SZ')}  home {report['home']}")
    # Why the bus could not be read is the one line on stderr; the screen only says what is missing because of it.
    console.print("bus: [green]reachable[/] (read as operator)" if bus["reachable"] else
                  "bus: [red]not readable[/] (see the line above): parameters, regime, kill-switch, prices and "
                  "stop levels unknown", highlight=False)
    if report["services"]:
        services = Table(title="Services (/readyz)", title_justify="left")
        for name in ("service", "status", "checks"):
            services.add_column(name)
        for name, s in report["services"].items():
            color = "green" if s["ready"] else "yellow" if s["status"] == "not ready" else "red"
            services.add_row(name, f"[{color}]{s['status']}[/]", s["detail"])
        console.print(services)
    else:
        console.print(f"services: none shown: {report['services_why']}", highlight=False)

    overview = Table(title="System", title_justify="left", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value")
    params = report["params"]
    if params is not None:
        text = f"v{params['version']} by {params.get('promoted_by', '-')}"
        text += f" ({params['reason']})" if params.get("reason") else ""
        text += f", {len(params.get('history', []))} stored" + (f"; NEWEST REFUSED: {params['refused']}"
                                                                  if params.get("refused") else "")
        overview.add_row("parameters", text)
    overview.add_row("regime", report["regime"] or ("-" if params is None else "not known yet"))
    latch = report["latch"]
    if latch is not None:
        _latch_rows(overview, latch)
    ready = report["data"].get("ready")
    if ready:
        overview.add_row("data", f"cycle {ready['cycle_id']}, {ready['symbols']} symbols, bar {utc(ready['as_of_ms'])}")
    book = report["portfolio"]
    if book is not None:
        overview.add_row("equity", f"{_num(book['equity'])} USDT at cycle {book['cycle_id']} ({book['status']}, "
                         f"{utc(book['committed_at_ms'])}); cash {_num(book['cash'])}; marked now "
                         f"{_num(book['equity_marked_now'])}")
        overview.add_row("drawdown", f"{colored(book['drawdown'], _num(100 * book['drawdown'], '.2f'))}% from peak "
                         f"{_num(book['peak'])}; exposure {_num(100 * book['exposure'], '.1f')}%")
        overview.add_row("books from", book["source"])
    elif not report["journal"]["visible"]:
        overview.add_row("books", f"unknown: {report['journal']['why']}")
    console.print(overview)

    if book is not None:
        positions = Table(title="Positions", title_justify="left")
        for name in ("symbol", "qty", "entry", "price", "value", "P&L", "P&L %", "stop"):
            positions.add_column(name, justify="left" if name == "symbol" else "right")
        for p in book["positions"]:
            positions.add_row(p["symbol"], f"{p['qty']:.8g}", f"{p['entry']:.8g}", _num(p["price"], ".8g"),
                              _num(p["value"]), colored(p["pnl"], _num(p["pnl"], ",.2f", True)),
                              colored(p["pnl_pct"], _num(p["pnl_pct"], ".2f", True)), _num(p["stop"], ".8g"))
        if not book["positions"]:
            positions.caption = "no positions: all in cash"
        console.print(positions)

    if not report["cycles"]:
        console.print("last cycles: none yet")
        return
    cycles = Table(title=f"Last cycles (from the {report['cycles'][0]['source']})", title_justify="left")
    for name in ("cycle", "time", "gate", "outcome", "legs", "reasons"):
        cycles.add_column(name, overflow="fold")
    for c in report["cycles"]:
        cycles.add_row(c["cycle_id"], utc(c["at_ms"]), c["gate"], c["outcome"], ", ".join(c["legs"][:4]) or "-",
                       "; ".join(c["reasons"][:2]) or "-")
    console.print(cycles)


# --- the command -----------------------------------------------------------------------------------------------------


async def _gather(settings: Settings) -> tuple[Any, str, tuple[dict[str, Any], str]]:
    (view, problem), services = await asyncio.gather(read_bus(settings), read_services(settings))
    return view, problem, services


def run_status(args: argparse.Namespace) -> int:
    settings = settings_for_command("aura status")
    if settings is None:
        return 2
    view, problem, (services, services_why) = asyncio.run(_gather(settings))
    journal = read_journal(settings, args.cycles)
    report = build_report(settings, view, problem, services, journal, args.cycles, services_why)
    if view is None:  # one line, whatever went wrong; the rest of the screen is what could be read
        shown = "the journal and the services" if services else "the journal"
        print(f"aura status: {' '.join(problem.split())} (showing {shown} only)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(clean(report), indent=2, sort_keys=True, default=str))
    else:
        render(report, make_console())
    return 0 if view is not None else 1


def add_status_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="one screen: services, bus, parameters, regime, kill-switch, equity, "
                                             "positions and the last cycles (read-only)")
    p.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    p.add_argument("--cycles", type=int_at_least(1), default=8, help="how many recent cycles to show (default 8)")
    p.set_defaults(func=run_status)
    add_trades_parsers(subparsers)
