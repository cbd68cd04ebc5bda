"""The crashing side of the crash trials (crash_trials.py): the simulator process, and the executor's plan path
run in a forked child that SIGKILLs itself at a seeded crash point or is killed by the parent after a delay.

The child's journal and broker are the real ones (``Journal``, ``CcxtBroker`` over HTTP to the simulator) with a
crash point before and after every journal commit and every broker call: the places where a crash leaves the
journal and the exchange disagreeing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import httpx

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET
from aura.strategy.types import MarketRule
from services.executor.brokers.base import BrokerError, OrderState, Quote, TransientBrokerError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.exchange_calls import ExecutionLimits
from services.executor.journal import Journal
from services.executor.runner import LivePolicy, SyncCheck, recover, run_plan
from shared.contracts import PlanBody

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT")
START_DATE = "2023-01-01"
GENESIS_USDT = 10_000.0
RECV_WINDOW_MS = 500  # the simulator refuses a signed request older than this...
SETTLE_S = 0.6  # ...so a "not found" this long after the last send is final (execution rule 6)


# --- the simulator, in its own process ------------------------------------------------------------------------


class SimProcess:
    """``python -m aura.exchange_sim`` on a free port, driven through its /_sim control endpoints."""

    def __init__(self, data_dir: Path, symbols: tuple[str, ...] = SYMBOLS, start: str = START_DATE) -> None:
        cmd = [sys.executable, "-m", "aura.exchange_sim", "--port", "0", "--data", str(data_dir), "--symbols",
               ",".join(symbols), "--start", start, "--balance", f"USDT={GENESIS_USDT}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise RuntimeError("exchange simulator did not start")
        self.url: str = json.loads(line)["exchange_sim"]
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, f"/_sim/{path}", json=body)
        resp.raise_for_status()
        return resp.json()

    def state(self) -> dict[str, Any]:
        return self.control("GET", "state")  # type: ignore[no-any-return]

    def server_time(self) -> int:
        """The exchange's clock (what the executor measures a plan's age against)."""
        resp = self.http.get("/api/v3/time")
        resp.raise_for_status()
        return int(resp.json()["serverTime"])

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- crash points inside a child process -----------------------------------------------------------------------


class CrashPoints:
    """Counts the crash points a run passes; SIGKILLs its own process at point ``kill_at`` (0 = never)."""

    def __init__(self, kill_at: int = 0) -> None:
        self.kill_at = kill_at
        self.passed = 0

    def hit(self, label: str) -> None:
        self.passed += 1
        if self.kill_at and self.passed == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 of this very process: nothing runs after this line


class CrashJournal(Journal):
    """The real journal; a crash point before and after every commit (a transaction lost or just made)."""

    def __init__(self, path: Path, points: CrashPoints) -> None:
        super().__init__(path)
        self.points = points

    def commit(self) -> None:
        self.points.hit("commit.before")
        super().commit()
        self.points.hit("commit.after")


class CrashBroker:
    """The real CcxtBroker; a crash point before each request and after each answer (or error) came back."""

    def __init__(self, inner: CcxtBroker, points: CrashPoints) -> None:
        self.inner = inner
        self.points = points
        self.name = inner.name

    async def _call(self, label: str, call: Callable[[], Awaitable[Any]]) -> Any:
        self.points.hit(f"{label}.before")
        try:
            out = await call()
        except BrokerError:
            self.points.hit(f"{label}.raised")
            raise
        self.points.hit(f"{label}.after")
        return out

    async def load_markets(self, reload: bool = False) -> dict[str, MarketRule]:
        return await self.inner.load_markets(reload)

    def unlisted(self, symbols: Iterable[str]) -> list[str]:
        return self.inner.unlisted(symbols)

    async def fetch_free_balances(self) -> dict[str, float]:
        return await self._call("balances", self.inner.fetch_free_balances)  # type: ignore[no-any-return]

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]:
        return await self._call("prices", lambda: self.inner.fetch_prices(symbols))  # type: ignore[no-any-return]

    async def fetch_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        return await self._call("prices", lambda: self.inner.fetch_quotes(symbols))  # type: ignore[no-any-return]

    async def fetch_time(self) -> int:
        return await self._call("time", self.inner.fetch_time)  # type: ignore[no-any-return]

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        return await self._call("place", lambda: self.inner.place_market_order(  # type: ignore[no-any-return]
            symbol, side, qty, client_order_id, ref_price, quote_amount))

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return await self._call("fetch", lambda: self.inner.fetch_order(  # type: ignore[no-any-return]
            symbol, client_order_id))

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return await self._call("cancel", lambda: self.inner.cancel_order(  # type: ignore[no-any-return]
            symbol, client_order_id))

    async def close(self) -> None:
        await self.inner.close()


# --- the executor path, as a process runs it -------------------------------------------------------------------


def limits() -> ExecutionLimits:
    return ExecutionLimits(max_order_usdt=1_000_000.0, max_attempts=6, backoff_s=0.01, fill_poll_s=0.005,
                           fill_timeout_s=0.5, settle_s=SETTLE_S)


SYNC = SyncCheck(confirm_reads=3, max_reads=8, delay_s=0.02)
# The live path as the executor service runs it: plans checked against the exchange's clock, every new leg
# priced and budgeted at the exchange's price (quote-amount buys), so the crash points cover those calls too.
LIVE = LivePolicy(max_price_deviation=0.02, max_spread=0.01, plan_max_age_ms=2 * 86_400_000 + 300_000,
                  bar_ms=86_400_000)


def make_broker(sim_url: str, markets: dict[str, Any], logger: logging.Logger) -> CcxtBroker:
    broker = CcxtBroker(api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET, base_url=sim_url, timeout_ms=400,
                        enable_rate_limit=False, adjust_for_time_difference=False,
                        options={"recvWindow": RECV_WINDOW_MS}, logger=logger)
    # Markets fetched once by the parent: a restart would fetch the same exchangeInfo, this only saves time.
    broker.exchange.set_markets(markets)
    return broker


async def executor_run(journal: Journal, broker: Any, plans: list[PlanBody], logger: logging.Logger,
                       boot: bool) -> list[str]:
    """What the executor does: (boot recovery), then every plan as the bus delivers it, retried like a nak."""
    rules = await broker.load_markets()
    marks: dict[str, float] = {}
    if boot:
        for attempt in range(20):
            try:
                await recover(journal, broker, rules, limits(), logger, marks, LIVE)
                break
            except TransientBrokerError:
                journal.rollback()
                await asyncio.sleep(0.05 * (attempt + 1))
    statuses = []
    for plan in plans:
        for attempt in range(20):  # a handler error is a nak: the plan comes back
            try:
                run = await run_plan(plan, broker, journal, rules, limits(), logger, marks, SYNC, LIVE)
                statuses.append(run.status)
                break
            except TransientBrokerError:
                journal.rollback()
                await asyncio.sleep(0.05 * (attempt + 1))
        else:
            statuses.append(str(journal.plan_status(plan.plan_id)))
    return statuses


def _child(journal_path: Path, sim_url: str, markets: dict[str, Any], plans: list[PlanBody], kill_at: int,
           boot: bool, logger: logging.Logger, count_file: Path | None = None) -> NoReturn:
    """Runs in the forked child: never returns, never runs the parent's cleanup (os._exit)."""
    code = 0
    try:
        points = CrashPoints(kill_at)

        async def go() -> None:
            journal = CrashJournal(journal_path, points)
            broker = CrashBroker(make_broker(sim_url, markets, logger), points)
            try:
                await executor_run(journal, broker, plans, logger, boot)
            finally:
                await broker.close()
                journal.close()

        asyncio.run(go())
        if count_file is not None:
            count_file.write_text(str(points.passed))
    except BaseException:
        traceback.print_exc()
        code = 3
    os._exit(code)


def fork_single_threaded() -> int:
    """``os.fork()`` from a parent with no other thread (one could hold a lock the child needs), its buffered
    output flushed first so the child does not write it a second time."""
    if threading.active_count() != 1:
        raise RuntimeError("fork needs a single-threaded parent (a thread could hold a lock the child needs)")
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def fork_child(journal_path: Path, sim_url: str, markets: dict[str, Any], plans: list[PlanBody], kill_at: int,
               boot: bool, logger: logging.Logger, delay_s: float = 0.0,
               count_file: Path | None = None) -> tuple[bool, int]:
    """Fork a child running the executor path; returns (died of SIGKILL, raw wait status)."""
    pid = fork_single_threaded()
    if pid == 0:
        _child(journal_path, sim_url, markets, plans, kill_at, boot, logger, count_file)
    if delay_s > 0:
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        os.kill(pid, signal.SIGKILL)  # alive or a zombie not yet reaped: the pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
