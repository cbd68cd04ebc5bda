"""Helpers for tests of the live executor's real service body on a real bus against the exchange simulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from shared.bus import publish
from shared.contracts import PlanBody, PlanLeg, PortfolioSnapshot, plan_id_for
from shared.credentials import signing_key
from shared.cycles import cycle_id_for
from shared.signing import sign_plan
from tests.bus_helpers import journal_rows, snapshot
from tests.conftest import NatsEndpoint

DAY = 86_400_000


@contextlib.contextmanager
def live_venue(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch, usdt: float = 10_000) -> Iterator[SimServer]:
    """The exchange simulator on the shared daily candles (BTC and ETH, from 2024-01-01) with ``usdt`` of cash,
    and the executor's keys for it in the environment (where the live executor reads them)."""
    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01", balances={"USDT": usdt})
    monkeypatch.setenv("AURA_EXCHANGE_API_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("AURA_EXCHANGE_API_SECRET", DEFAULT_API_SECRET)
    with SimServer(config=config) as server:
        yield server


def live_settings(bus: NatsEndpoint, sim: SimServer, **extra: str) -> Any:
    """A live executor's settings on ``bus`` trading on ``sim`` (10,000 USDT of capital and a per-order cap that
    binds no leg of these tests, unless ``extra`` says; live mode refuses to start without a cap)."""
    return bus.settings(**{"AURA_DRY_RUN": "false", "AURA_INGEST_SOURCE": "sync",
                           "AURA_EXCHANGE_API_URL": sim.base_url, "AURA_PAPER_CASH_USDT": "10000",
                           "AURA_MAX_ORDER_USDT": "1000000", **extra})


async def publish_plan(js_risk: Any, settings: Any, sim: SimServer, basis_id: str, *legs: tuple[str, str, float],
                       tick: bool = False) -> PlanBody:
    """Play risk: a signed plan of (symbol, side, qty) legs at the simulator's prices, fresh by the exchange's
    clock: a data cycle's, named by the bar the simulator's clock closed last (the executor trades a bar once:
    a second one needs ``sim.sim.advance(1)``), or with ``tick`` a risk tick's exit plan, dated now."""
    prices = {sym: float(sim.sim.price(sym.replace("/", ""))) for sym, _, _ in legs}
    now = int(sim.sim.now_ms())
    as_of = now if tick else now // DAY * DAY - DAY
    cycle_id = f"tick-{len(legs)}-{now}" if tick else cycle_id_for("1d", as_of)
    fields: dict[str, Any] = {
        "cycle_id": cycle_id, "as_of_ms": as_of, "data_digest": "d",
        "target_id": f"t-{cycle_id}", "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis_id,
        "gate": "pass", "halted": False, "reasons": [], "prices": prices,
        "legs": [PlanLeg(i, sym, side, qty, prices[sym], "stop_loss" if tick else "enter")
                 for i, (sym, side, qty) in enumerate(legs)]}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(js_risk, sign_plan(body, signing_key(settings.keys, "risk")), msg_id=body.plan_id)
    return body


def closed_by(js_operator: Any, body: PlanBody) -> Any:
    """A probe for ``until``: the newest snapshot, once it is the one that closed ``body``'s cycle."""

    async def probe() -> PortfolioSnapshot | None:
        snap = await snapshot(js_operator)
        return snap if snap.plan_id == body.plan_id else None

    return probe


def intents(settings: Any, body: PlanBody) -> list[tuple[str, str, str]]:
    """(symbol, status, reason) of each leg of ``body`` as the journal has it."""
    rows = journal_rows(settings, "SELECT symbol, status, reason FROM intents WHERE plan_id=? ORDER BY leg_index",
                        (body.plan_id,))
    return [(str(a), str(b), str(c)) for a, b, c in rows]
