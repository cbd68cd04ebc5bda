"""`aura rehearse`: the whole system LIVE against the venue simulator, from a chosen date, on a fast clock.

The simulator (``aura.exchange_sim``) runs in this process and serves one market on one clock to everyone:
ingest syncs from its archive, klines and CoinGecko faces (``AURA_INGEST_SOURCE=sync``), the executor trades
on its API with the simulator's key (``AURA_DRY_RUN=false``; the key reaches the executor process only), risk
reads its tickers.  So every plan is made, checked and filled at the same prices, as it would be live.

The clock starts a minute after the close of the ``--from`` day and runs at ``--speed`` x real time (a daily
bar every 86,400 / speed seconds), paced by the system: it closes the next bar only once the last bar's cycle
has ended in the journal (the first one waits for the boot and a year of history to sync).  So each plan is
filled inside the bar it was made for, at the price ingest saw, on any machine; a cycle that does not end
within a minute of wall time (the system stuck) lets the clock move on a bar.

Live mode needs a per-order cap (``AURA_MAX_ORDER_USDT``, shared/config.py): the operator's, when set in the
environment or the ``AURA_CONFIG`` file, is rehearsed as is; without one the rehearsal caps each order at the
capital setting (``AURA_PAPER_CASH_USDT``): no buy can spend more than that anyway, so it binds only an order
larger than the whole starting capital (the sale of a position grown past it).

Each rehearsal gets its own AURA_HOME under ``$AURA_HOME/rehearsals/`` (journal, bus, cache, logs) and its own
embedded bus: a fresh simulator account never meets an old journal.  At the end the journal's last snapshot is
compared with the simulator's balances.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aura.cli_types import int_at_least
from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from aura.exchange_sim.cli import speed_arg
from aura.exchange_sim.clock import parse_ms
from aura.exchange_sim.config import default_data_dir
from aura.launcher import up
from services.executor.secrets import CREDENTIAL_ENV
from services.ingest.replay import load_market_rules
from shared.config import ConfigError, Settings, load_settings, setting_sources
from shared.read_only import connect_read_only

# A daily bar every 6 s: room for a sync, a plan and its orders inside each bar, which live mode demands (a plan
# on a bar older than one bar plus a grace is refused, and the price guard compares with the next bar's price).
DEFAULT_SPEED = 14_400.0
WAIT_AFTER_CLOSE_MS = 60_000  # the clock waits a minute past a close: ingest takes a bar only after a grace
PATIENCE_S = 60.0


class Pacer:
    """Holds the venue's clock a minute past the close of the bar after the last one journaled."""

    def __init__(self, venue: SimServer, timeframe: str) -> None:
        self.clock = venue.sim.clock
        self.timeframe = timeframe
        self.iv = venue.sim.market.interval_ms
        self.limit = self.clock.now_ms()
        self.clock.hold_at(self.limit)
        self.raised_at: float | None = None  # monotonic time of the last raise; None before the first cycle
        self.stop = threading.Event()

    def cycle_ended(self, cycle_id: str) -> None:
        prefix, _, stamp = cycle_id.partition("-")
        if prefix != self.timeframe:
            return  # a risk tick or an operator's adoption, not a bar
        bar = int(datetime.strptime(stamp, "%Y%m%dT%H%M").replace(tzinfo=UTC).timestamp() * 1000)
        self._raise(bar + 2 * self.iv + WAIT_AFTER_CLOSE_MS)

    def _raise(self, limit: int) -> None:
        if limit > self.limit:
            self.limit = limit
            self.clock.hold_at(limit)
        self.raised_at = time.monotonic()

    def watch(self) -> None:
        while not self.stop.wait(0.5):
            if self.raised_at is not None and time.monotonic() - self.raised_at > PATIENCE_S:
                _say(f"no cycle ended for {PATIENCE_S:.0f}s at {_day(self.clock.now_ms())}; the clock moves on a bar")
                self._raise(self.limit + self.iv)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _say(msg: str) -> None:
    print(f"[aura] {msg}", flush=True)


def rehearsal_env(base: dict[str, str], venue: SimServer, home: Path, bar_s: float,
                  symbols: list[str], paper_cash_usdt: float) -> dict[str, str]:
    """The environment of a rehearsal: live, synced from the simulator, trading on it with its key.
    ``paper_cash_usdt``: the capital setting, the per-order cap when ``base`` sets none."""
    env = {k: v for k, v in base.items() if k not in CREDENTIAL_ENV and k != "AURA_NATS_URL"}
    if "max_order_usdt" not in setting_sources(base):
        # Live mode refuses to start without a per-order cap (shared/config.py).  The operator's own (from the
        # environment, or the AURA_CONFIG file, which stays in the rehearsal's environment) is rehearsed as it
        # would run; without one, the capital, the most the executor may use live: no buy can spend more anyway,
        # so the cap binds only an order larger than the whole starting capital (a position grown past it).
        env["AURA_MAX_ORDER_USDT"] = repr(float(paper_cash_usdt))
    env.update({
        "AURA_HOME": str(home),
        "AURA_DRY_RUN": "false",
        "AURA_TESTNET": "false",
        "AURA_EXCHANGE_ID": "binance",
        "AURA_INGEST_SOURCE": "sync",
        "AURA_BINANCE_ARCHIVE_URL": venue.base_url,
        "AURA_BINANCE_API_URL": venue.base_url,
        "AURA_COINGECKO_URL": venue.coingecko_url,
        "AURA_EXCHANGE_API_URL": venue.base_url,
        # Handed to the executor alone by the launcher (service_env), like real keys.
        "AURA_EXCHANGE_API_KEY": venue.sim.config.api_key,
        "AURA_EXCHANGE_API_SECRET": venue.sim.config.api_secret,
        # Poll often enough to see each bar early in its life: its plan must fill before the next bar closes.
        "AURA_INGEST_POLL_S": f"{max(0.05, bar_s / 20):.3f}",
        "AURA_INGEST_CCXT_RATE_LIMIT_MS": "1",
        "AURA_COINGECKO_MIN_INTERVAL_S": "0",
    })
    if not base.get("AURA_SYMBOLS"):
        env["AURA_SYMBOLS"] = ",".join(symbols)
    return env


def universe(settings: Settings, venue: SimServer) -> list[str]:
    """The pairs of markets.json the simulator lists at its start (a pair listed later could never complete
    a snapshot: the universe is fixed for the run)."""
    listed = set(venue.sim.market.listed())
    rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
    return [sym for sym in sorted(rules) if sym.replace("/", "") in listed]


def books(journal: Path, venue: SimServer) -> list[str]:
    """Where the journal's last snapshot and the simulator's balances disagree (empty: they agree exactly)."""
    if not journal.exists():
        return ["no journal"]
    db = connect_read_only(journal, timeout=5)
    try:
        row = db.execute("SELECT cash, holdings FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        db.close()
    if row is None:
        return ["no snapshot in the journal"]
    held: dict[str, float] = {sym.split("/")[0]: qty for sym, qty in json.loads(row[1]).items()}
    held["USDT"] = row[0]
    balances: dict[str, Any] = venue.sim.state()["balances"]
    exchange = {a: float(b["free"]) + float(b["locked"]) for a, b in balances.items()}
    return [f"{asset}: journal {held.get(asset, 0.0):.8f}, simulator {exchange.get(asset, 0.0):.8f}"
            for asset in sorted(set(held) | set(exchange))
            if abs(held.get(asset, 0.0) - exchange.get(asset, 0.0)) > 1e-9]


def make_venue(settings: Settings, first_bar: int | None, data_dir: Path | None = None,
               cash: float | None = None) -> SimServer:
    """The venue simulator of a rehearsal (not yet serving: use it as a context manager): its clock stands a
    minute past the close of the ``first_bar`` day until the rehearsal sets it running."""
    config = SimConfig(data_dir=data_dir or default_data_dir(), timeframe=settings.timeframe, start=first_bar,
                       speed=0.0, balances={"USDT": cash if cash is not None else settings.paper_cash_usdt},
                       api_key=DEFAULT_API_KEY, api_secret=DEFAULT_API_SECRET)
    venue = SimServer(config=config)
    try:
        venue.sim.set_now(venue.sim.now_ms() + WAIT_AFTER_CLOSE_MS)
    except BaseException:
        venue.stop()  # its socket is bound already
        raise
    return venue


def rehearse(start: str, speed: float = DEFAULT_SPEED, cycles: int | None = None, data_dir: Path | None = None,
             cash: float | None = None, ready_timeout_s: float = 120.0) -> int:
    try:
        # The operator's settings, not yet the rehearsal's: it sets live mode and its per-order cap itself.
        settings = load_settings(dict(os.environ), places_orders=False)
        first_bar = parse_ms(start)
    except (ConfigError, ValueError) as exc:
        print(f"aura rehearse: {exc}", file=sys.stderr)
        return 2
    if not speed > 0:
        print(f"aura rehearse: --speed must be > 0 (the clock must run), got {speed:g}", file=sys.stderr)
        return 2
    home = settings.home_path / "rehearsals" / f"{start}-x{speed:g}-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        venue = make_venue(settings, first_bar, data_dir, cash)
    except (OSError, ValueError) as exc:
        print(f"aura rehearse: cannot start the venue simulator: {exc}", file=sys.stderr)
        return 2
    with venue:
        symbols = universe(settings, venue)
        if not symbols:
            print(f"aura rehearse: the simulator lists none of the pairs of {settings.replay_dir}/markets.json on "
                  f"{start}", file=sys.stderr)
            return 2
        bar_s = venue.sim.market.interval_ms / 1000 / speed
        env = rehearsal_env(dict(os.environ), venue, home, bar_s, symbols, settings.paper_cash_usdt)
        _say(f"rehearsal home {home}")
        _say(f"venue simulator at {venue.base_url} (archive, Binance API; CoinGecko at {venue.coingecko_url}), "
             f"{len(symbols)} pairs; its clock runs at {speed:g}x real time (a {settings.timeframe} bar every "
             f"{bar_s:.2f}s) from {_day(venue.sim.now_ms())}, each bar once the last one's cycle has ended")
        pacer = Pacer(venue, settings.timeframe)
        venue.sim.clock.set_speed(speed)
        watcher = threading.Thread(target=pacer.watch, name="rehearsal-pacer", daemon=True)
        watcher.start()

        def on_cycle(done: int, cycle_id: str) -> None:
            if cycles is None or done < cycles:  # after the last one the clock stays: no cycle is cut short
                pacer.cycle_ended(cycle_id)

        try:
            code = up(cycles=cycles, ready_timeout_s=ready_timeout_s, env=env, on_cycle=on_cycle,
                      prog="aura rehearse")
        finally:
            pacer.stop.set()
            venue.sim.clock.set_speed(0.0)
        _say(f"simulator clock stopped at {_day(venue.sim.now_ms())}")
        if code != 0:
            return code
        differ = books(home / "executor" / "journal.sqlite", venue)
        if differ:
            print("aura rehearse: the journal and the simulator disagree: " + "; ".join(differ), file=sys.stderr)
            return 1
        _say("journal == simulator balances")
        return 0


def _run(args: argparse.Namespace) -> int:
    return rehearse(args.start, args.speed, args.cycles, args.data, args.cash)


def add_rehearse_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rehearse", help="run the whole system live against the venue simulator, fast",
        description="Run the whole system live against the venue simulator, fast.  Each order is capped at "
                    "AURA_MAX_ORDER_USDT when set (environment or the AURA_CONFIG file), else at "
                    "AURA_PAPER_CASH_USDT, the capital.")
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD",
                   help="the first daily cycle trades this day's candle (the clock starts when it closes)")
    p.add_argument("--speed", type=speed_arg, default=DEFAULT_SPEED,
                   help=f"clock speed, x real time (default {DEFAULT_SPEED:g}: a daily bar every "
                        f"{86_400 / DEFAULT_SPEED:g}s)")
    p.add_argument("--cycles", type=int_at_least(1), default=None, help="stop once N cycles have ended in the journal")
    p.add_argument("--data", type=Path, default=None,
                   help="candles the simulator serves (default: the bundled data/replay)")
    p.add_argument("--cash", type=float, default=None,
                   help="the simulator account's starting USDT (default: setting paper_cash_usdt)")
    p.set_defaults(func=_run)
