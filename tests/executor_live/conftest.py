"""execute_plan / run_plan + the real CcxtBroker (ccxt.async_support over HTTP) + the exchange simulator.

A fresh simulator per test on a free loopback port, serving real 1d candles; a real SQLite journal file.
The broker signs with a short recvWindow and the executor settles lookups just past it (execution rule 6),
the same relation production keeps with ccxt's 10 s window and an 11 s settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.exchange_calls import ExecutionLimits
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis
from shared.contracts import PlanBody, PlanLeg, plan_id_for
from tests.executor_live.live_service import live_venue

T = TypeVar("T")
RECV_WINDOW_MS = 300
LIMITS = ExecutionLimits(max_order_usdt=1_000_000.0, backoff_s=0.01, fill_poll_s=0.01, fill_timeout_s=2.0,
                         settle_s=0.4)


class Records(logging.Handler):
    """Every log record of the executor path, to assert on the permanent tags ([SKIP], [SYNC_GUARD], ...)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tagged(self, tag: str) -> list[str]:
        return [r.getMessage() for r in self.records if getattr(r, "tag", None) == tag]

    def fields(self, tag: str) -> list[dict[str, Any]]:
        return [dict(getattr(r, "fields", {}) or {}) for r in self.records if getattr(r, "tag", None) == tag]


@dataclass
class Rig:
    server: SimServer
    journal: Journal
    log: logging.Logger
    records: Records
    plans: int = 0
    prices: dict[str, float] = field(default_factory=dict)

    def broker(self, **overrides: Any) -> CcxtBroker:
        opts: dict[str, Any] = {"api_key": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET,
                                "base_url": self.server.base_url, "timeout_ms": 2000, "enable_rate_limit": False,
                                "adjust_for_time_difference": False, "options": {"recvWindow": RECV_WINDOW_MS},
                                "logger": self.log}
        opts.update(overrides)
        return CcxtBroker(**opts)

    def run(self, scenario: Callable[[CcxtBroker], Awaitable[T]], **broker_overrides: Any) -> T:
        """``scenario(broker)`` in a fresh event loop (a process's life), the broker always closed."""

        async def main() -> T:
            broker = self.broker(**broker_overrides)
            try:
                return await scenario(broker)
            finally:
                await broker.close()

        return asyncio.run(main())

    def price(self, symbol: str) -> float:
        return float(self.server.sim.price(symbol.replace("/", "")))

    def plan(self, *legs: tuple[str, str, float]) -> PlanBody:
        """A plan of (symbol, side, qty) legs at the simulator's current prices; a new plan id each call."""
        self.plans += 1
        prices = {sym: self.price(sym) for sym, _, _ in legs}
        body: dict[str, Any] = {
            "cycle_id": f"live-{self.plans}", "as_of_ms": self.plans, "data_digest": "d", "target_id": "t",
            "params_version": 0, "params_digest": "p", "basis_snapshot_id": f"b-{self.plans}", "gate": "pass",
            "halted": False, "reasons": [], "prices": prices,
            "legs": [PlanLeg(i, sym, side, qty, prices[sym], "test") for i, (sym, side, qty) in enumerate(legs)]}
        return PlanBody(plan_id=plan_id_for(body), **body)

    def posts(self) -> int:
        return self.server.sim.faults.counts().get("POST /api/v3/order", 0)

    def account_reads(self) -> int:
        return self.server.sim.faults.counts().get("GET /api/v3/account", 0)

    def sim_orders_by_cid(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.server.sim.orders():
            out[o.client_order_id] = out.get(o.client_order_id, 0) + 1
        return out


@pytest.fixture
def rig(shared_data_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Simulator overrides via ``@pytest.mark.parametrize("rig", [{...}], indirect=True)``."""
    cfg: dict[str, Any] = {"data_dir": shared_data_dir / "binance" / "1d", "symbols": ("BTCUSDT", "ETHUSDT"),
                           "start": "2024-01-01", "balances": {"USDT": 10_000}}
    cfg.update(getattr(request, "param", {}) or {})
    with open_rig(cfg, request.node.name, tmp_path / "journal.sqlite") as opened:
        yield opened


@contextlib.contextmanager
def open_rig(cfg: dict[str, Any], name: str, journal_path: Path) -> Iterator[Rig]:
    """A simulator of ``cfg`` (SimConfig's fields), a journal with its genesis, and a logger whose records are kept."""
    records = Records()
    log = logging.getLogger(f"aura.test.executor_live.{name}")
    log.setLevel(logging.DEBUG)
    log.addHandler(records)
    journal = Journal(journal_path)
    ensure_genesis(journal, float(cfg["balances"].get("USDT", 0)))
    with SimServer(config=SimConfig(**cfg)) as server:
        try:
            yield Rig(server, journal, log, records)
        finally:
            journal.close()
            log.removeHandler(records)


@pytest.fixture()
def sim(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimServer]:
    """The exchange simulator a live executor service trades on (tests/executor_live/live_service.py)."""
    with live_venue(shared_data_dir, monkeypatch) as server:
        yield server
