"""A rehearsal with its parts in reach: the system live against the venue simulator, for tests and benchmarks.

`aura rehearse` runs the system and compares the books at the end.  The end-to-end tests and
``bench/live_cycle.py`` need more while it runs: the venue object (its orders, trades, request counts and
Decimal balances), the executor process (to kill -9 and restart it), the journal, and the wall time at which
each bar closed on the simulator's clock.  :class:`LiveRehearsal` gives those.  It is built from
``aura/rehearse.py``'s own parts (``make_venue``, ``universe``, ``rehearsal_env``, ``Pacer``) and the launcher's
(``start_stack``, ``start_service``, ``wait_ready``), so it runs what `aura rehearse` runs: every process of
`aura up` (ingest syncing from the simulator, signal, risk, the optimizer, the live executor...) on an
authenticated nats-server.
Two differences, both about where things run: the bus is its own, on a free port (never 4222), and the pacing
loop (`up()`'s journal watch) runs in a thread here, because `up()` stops the system when a service dies, and
here the executor dies on purpose.

:func:`check_books` is the verdict: the journal against the simulator's own books, exactly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from aura.exchange_sim import SimServer
from aura.exchange_sim.clock import parse_ms
from aura.launcher import Stack, committed_cycles, start_service, start_stack, tail, wait_ready
from aura.natsd import NatsServer, free_port, start_bus
from aura.rehearse import DEFAULT_SPEED, Pacer, make_venue, rehearsal_env, universe
from services.executor.venue_books import verify
from shared import contracts
from shared.config import SERVICE_NAMES, load_settings
from shared.credentials import ensure_credentials
from shared.read_only import connect_read_only


@dataclass(frozen=True)
class CycleSeen:
    """A cycle the journal closed, and the wall time this process saw it (``time.time()``)."""

    seq: int
    cycle_id: str
    status: str
    equity: float
    seen_wall: float


class LiveRehearsal:
    """``with LiveRehearsal(home, "2021-03-01") as lab: lab.wait_cycles(5)``; ``lab.stop()`` then ``check_books``.

    ``env``: the base environment (default: os.environ); ``overrides`` go on top of the rehearsal's own settings
    (e.g. ``AURA_TESTNET``).  ``executor_ack_wait_s``: provision the executor's durable consumer with this ack wait
    instead of the product's 30 s (see tests/e2e/test_live_kills.py for why a kill test wants that).  ``pycache``:
    where the service processes keep compiled bytecode (None: as the environment says).  ``as_testnet_of``: the
    venue plays the testnet of the main venue at that URL (AURA_TESTNET=true; AURA_EXCHANGE_TESTNET_URL = the
    venue, AURA_EXCHANGE_API_URL = that URL).
    """

    def __init__(self, home: Path, start: str = "2021-03-01", *, speed: float = DEFAULT_SPEED,
                 cash: float | None = None, env: dict[str, str] | None = None,
                 overrides: dict[str, str] | None = None, executor_ack_wait_s: float | None = None,
                 pycache: Path | None = None, as_testnet_of: str | None = None,
                 ready_timeout_s: float = 180.0) -> None:
        self.home, self.start, self.speed, self.cash = home, start, speed, cash
        self.as_testnet_of = as_testnet_of
        self.base_env = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("AURA_")}
        if pycache is not None:
            # Service processes compile their imports once, into this folder, as on a machine that keeps bytecode
            # (pip-installed images do): a restarted executor then boots in seconds, not in ccxt's compile time.
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.overrides = dict(overrides or {})
        self.ack_wait_s = executor_ack_wait_s
        self.ready_timeout_s = ready_timeout_s
        self.venue: SimServer | None = None
        self.bus: NatsServer | None = None
        self.stack: Stack | None = None
        self.pacer: Pacer | None = None
        self.cycles: list[CycleSeen] = []
        self.bar_close_wall: dict[int, float] = {}  # bar open ms -> wall time its close passed on the venue
        self.ready_s = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- life cycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> LiveRehearsal:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        # The overrides count for the capital (the rehearsal's default per-order cap) as for everything else.
        settings = load_settings({**self.base_env, **self.overrides, "AURA_HOME": str(self.home)},
                                 places_orders=False)
        self.venue = make_venue(settings, parse_ms(self.start), cash=self.cash).start()
        symbols = universe(settings, self.venue)
        bar_s = self.venue.sim.market.interval_ms / 1000 / self.speed
        env = rehearsal_env(self.base_env, self.venue, self.home, bar_s, symbols, settings.paper_cash_usdt)
        env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
        if self.as_testnet_of is not None:
            # The venue plays the exchange's testnet; the main venue's address is set too, and must stay unused.
            env.update({"AURA_TESTNET": "true", "AURA_EXCHANGE_TESTNET_URL": self.venue.base_url,
                        "AURA_EXCHANGE_API_URL": self.as_testnet_of})
        env.update(self.overrides)
        settings = load_settings(env)
        ensure_credentials(settings.keys)
        self.bus = start_bus(settings, free_port())
        env["AURA_NATS_URL"] = self.bus.url
        consumers = dict(contracts.CONSUMERS)
        if self.ack_wait_s is not None:
            consumers["executor"] = msgspec.structs.replace(consumers["executor"], ack_wait_s=self.ack_wait_s)
        t0 = time.monotonic()
        self.stack = start_stack(load_settings(env), env, consumers=consumers)
        wait_ready(self.stack, self.ready_timeout_s)
        self.ready_s = time.monotonic() - t0
        self.pacer = Pacer(self.venue, settings.timeframe)
        self.venue.sim.clock.set_speed(self.speed)
        for target, name in ((self.pacer.watch, "rehearsal-pacer"), (self._watch_journal, "rehearsal-journal")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the services (SIGTERM, as `aura up` does) and the clock; the venue stays up for the verdict."""
        self._stop.set()
        if self.pacer is not None:
            self.pacer.stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self.venue is not None:
            self.venue.sim.clock.set_speed(0.0)
        if self.stack is not None:
            self.stack.stop()

    def close(self) -> None:
        self.stop()
        if self.bus is not None:
            self.bus.stop()
            self.bus = None
        if self.venue is not None:
            self.venue.stop()

    # --- the pacing loop: what `up()` does with its journal watch ----------------------------------------------

    def _watch_journal(self) -> None:
        assert self.pacer is not None and self.stack is not None and self.venue is not None
        seen = 0
        iv = self.venue.sim.market.interval_ms
        while not self._stop.wait(0.02):
            for seq, cycle_id, status, equity in committed_cycles(self.stack.settings.journal_path, seen):
                seen = seq
                with self._lock:
                    self.cycles.append(CycleSeen(seq, cycle_id, status, equity, time.time()))
                self.pacer.cycle_ended(cycle_id)
                bar = cycle_bar_ms(cycle_id)
                if bar is not None:  # the bar this raise lets close: when (wall time) it will close
                    clock = self.venue.sim.clock
                    wall, now = time.time(), clock.now_ms()
                    close = bar + 2 * iv
                    self.bar_close_wall.setdefault(bar + iv, wall + max(0, close - now) / 1000 / clock.speed)

    # --- what tests read and do -----------------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        assert self.stack is not None
        return self.stack.settings.journal_path

    def seen(self) -> list[CycleSeen]:
        with self._lock:
            return list(self.cycles)

    def bar_cycles(self) -> list[CycleSeen]:
        """The journaled cycles of data bars (not risk ticks or adoptions), each once, in journal order."""
        out: dict[str, CycleSeen] = {}
        for c in self.seen():
            if cycle_bar_ms(c.cycle_id) is not None:
                out.setdefault(c.cycle_id, c)
        return list(out.values())

    def wait_cycles(self, n: int, timeout_s: float) -> list[CycleSeen]:
        """Until ``n`` bar cycles are journaled; raises (with the dead service's log) if one died or time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.raise_if_dead()
            cycles = self.bar_cycles()
            if len(cycles) >= n:
                return cycles
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.bar_cycles())} of {n} cycles journaled after {timeout_s:.0f}s; executor log:\n"
                           f"{self.log_tail('executor')}")

    def raise_if_dead(self, allow: tuple[str, ...] = ()) -> None:
        assert self.stack is not None
        dead = [(name, code) for name, code in self.stack.dead() if name not in allow]
        if dead:
            raise RuntimeError("; ".join(f"service {n} exited with {c}; last log lines:\n{self.log_tail(n)}"
                                         for n, c in dead))

    def log_tail(self, name: str, lines: int = 15) -> str:
        assert self.stack is not None
        return tail(self.stack.logs / f"{name}.log", lines)

    def log_size(self, name: str) -> int:
        assert self.stack is not None
        with contextlib.suppress(OSError):
            return (self.stack.logs / f"{name}.log").stat().st_size
        return 0

    def log_since(self, name: str, offset: int) -> str:
        assert self.stack is not None
        with open(self.stack.logs / f"{name}.log", "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def executor(self) -> subprocess.Popen[bytes]:
        assert self.stack is not None
        return self.stack.procs["executor"]

    def kill_executor(self) -> int:
        """kill -9 of the executor process; returns its exit status (-9)."""
        proc = self.executor()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)

    def restart_executor(self) -> subprocess.Popen[bytes]:
        """The executor again, as the launcher started it (same environment, same journal, same log)."""
        assert self.stack is not None
        return start_service(self.stack, "executor")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the journal (read-only, while the executor may be writing it)."""
        if not self.journal_path.exists():
            return []
        db = connect_read_only(self.journal_path, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # the schema is not there yet
        finally:
            db.close()


def cycle_bar_ms(cycle_id: str) -> int | None:
    """The open time of the bar a data cycle id names ("1d-20210301T0000"); None for ticks and adoptions."""
    prefix, _, stamp = cycle_id.partition("-")
    if not prefix[:1].isdigit() or len(stamp) != 13:
        return None
    try:
        return parse_ms(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}")
    except ValueError:
        return None


def check_books(journal: Path, venue: SimServer) -> list[str]:
    """Every way the journal and the simulator's books disagree (empty: they agree exactly).

    Run with the executor stopped.  The invariants of ``services/executor/venue_books.verify`` (no clientOrderId
    booked twice, no exchange order the journal does not know, no working order left, the journal's fills are the
    exchange's trades under the right order, every intent final, balances equal to the last 1e-8) plus: each
    journaled fill at exactly the price, quantity and fee the exchange booked.
    """
    state = venue.sim.state()
    orders, trades, balances = state["orders"], state["trades"], state["balances"]
    assets = sorted(a for a in balances if a != "USDT")
    violations, _, _ = verify(journal, [], orders, trades, balances, assets)
    db = connect_read_only(journal, timeout=5.0)
    try:
        rows = db.execute("SELECT trade_id, qty, price, fee_base, fee_quote FROM fills").fetchall()
    finally:
        db.close()
    booked = {str(t["id"]): t for t in trades}
    for trade_id, qty, price, fee_base, fee_quote in rows:
        t = booked.get(str(trade_id))
        if t is None:
            continue  # reported by verify
        fee = fee_base + fee_quote
        if (qty, price, fee) != (float(Decimal(t["qty"])), float(Decimal(t["price"])), float(Decimal(t["commission"]))):
            violations.append(f"fill {trade_id}: journal qty {qty} price {price} fee {fee}, exchange qty {t['qty']} "
                              f"price {t['price']} fee {t['commission']}")
    return violations
