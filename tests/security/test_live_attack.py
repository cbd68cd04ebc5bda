"""The issue's most expensive attack, against a live executor trading on the exchange simulator.

A compromised signal service published a target with BTC priced at 1/90 of the exchange's price; risk signed
it and the live executor bought 2.06 BTC for 89,999.72 USDT under a 1,000 USDT cap.  Here the real risk and
executor bodies run live (the executor through ccxt against the simulator, risk on its public tickers), the
test plays ingest (the day's candles, at the exchange's prices) and the compromised signal.  The target is
refused: no plan is signed, no order reaches the exchange, and the exchange's balances do not move.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside the scenario's event loop
from aura.strategy.params import StrategyParams
from aura.strategy.types import Panel
from services.ingest.replay import load_market_rules
from services.signal.service import make_target
from shared.bus import last_message
from shared.contracts import (
    ApprovedPlan,
    DeadLetter,
    PortfolioSnapshot,
    TargetPortfolio,
    encode,
)
from shared.cycles import cycle_id_for
from shared.health import HealthState
from tests.bus_helpers import (
    announce_panel,
    dead_letters,
    market_msgs,
    publish_buy,
    reforged_target,
    role_connections,
    running,
    snapshot,
    until,
)
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import live_settings, live_venue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DAY = 86_400_000
SYMBOLS = ("BTC/USDT", "ETH/USDT")


def test_a_target_priced_at_one_ninetieth_never_reaches_the_exchange(nats_server: NatsEndpoint, tmp_path: Path,
                                                                     shared_data_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with live_venue(shared_data_dir, monkeypatch, usdt=100_000) as sim:
        settings = live_settings(nats_server, sim, AURA_MAX_ORDER_USDT="1000", AURA_RISK_TICK_S="0.3",
                                 AURA_PAPER_CASH_USDT="100000")
        prices = {s: float(sim.sim.price(s.replace("/", ""))) for s in SYMBOLS}
        balances_before = sim.sim.state()["balances"]

        async def scenario() -> tuple[list[DeadLetter], bytes | None, HealthState]:
            async with running(settings, "executor", "risk") as services, \
                    role_connections(settings, "ingest", "signal", "operator") as js:
                # Ingest: 120 days of candles ending at the exchange's price today.
                t = 120
                stamps = np.arange(t, dtype=np.int64) * DAY + 1_704_067_200_000 - (t - 1) * DAY
                closes = np.array([[prices[s] * (1 + 0.001 * (i - t)) for s in SYMBOLS] for i in range(t)])
                panel = Panel(SYMBOLS, stamps, closes, closes * 1.01, closes * 0.99, closes, np.full_like(closes, 1e9))
                rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
                ready = await announce_panel(js["ingest"], panel, cycle_id_for("1d", int(stamps[-1])),
                                             market_msgs(SYMBOLS, rules))
                # The compromised signal: the genuine target of the day, then BTC at 1/90 and 95% in it.
                genuine, _ = make_target(ready, panel, StrategyParams(), 0, None)
                forged = reforged_target(genuine, weights={"BTC/USDT": 0.95},
                                         prices={**genuine.prices, "BTC/USDT": genuine.prices["BTC/USDT"] / 90})
                await js["signal"].publish(TargetPortfolio.SUBJECT, encode(forged), timeout=5)
                found = await until(lambda: dead_letters(js["operator"], "risk"),
                                    "risk's dead letter for the forged target", 60)
                await asyncio.sleep(1.0)  # a few risk ticks on live tickers; nothing may trade
                plan = await last_message(js["operator"], ApprovedPlan.SUBJECT)
                return found, plan, services["risk"].health

        found, plan, risk_health = asyncio.run(scenario())
        assert [letter.reason for letter in found] == ["forged_target"], [(x.reason, x.error) for x in found]
        assert "BTC/USDT" in found[0].error and "prices differ" in found[0].error
        assert plan is None, "risk signed a plan"
        assert risk_health.counters.get("forged_targets") == 1
        requests: dict[str, Any] = sim.sim.request_counts()
        assert "POST /api/v3/order" not in requests, f"an order reached the exchange: {requests}"
        assert sim.sim.state()["balances"] == balances_before


def test_plans_signed_with_risks_key_spend_at_most_the_cap_at_the_exchanges_price(
        nats_server: NatsEndpoint, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compromised risk signs what it likes; the live executor still bounds spending at the exchange's price.
    Under AURA_MAX_ORDER_USDT=1000: a signed plan with BTC at 1/90 of the exchange's price (1,000 USDT at the
    plan's price, 90,000 at the exchange's) buys nothing ([PRICE_GUARD]); a signed plan for a whole BTC at a
    price just inside the guard spends at most the cap."""
    with live_venue(shared_data_dir, monkeypatch, usdt=100_000) as sim:
        settings = live_settings(nats_server, sim, AURA_MAX_ORDER_USDT="1000", AURA_PAPER_CASH_USDT="100000")
        usdt = lambda: float(sim.sim.free("USDT"))  # noqa: E731
        prices: list[float] = []

        async def scenario() -> tuple[PortfolioSnapshot, float, PortfolioSnapshot, float]:
            async with running(settings, "executor"), role_connections(settings, "risk", "operator") as js:
                outcomes = []
                for n in range(2):
                    if n:  # the executor trades a bar's plan once: the second plan is the next bar's
                        sim.sim.advance(1)
                    btc = float(sim.sim.price("BTCUSDT"))
                    prices.append(btc)
                    as_of = int(sim.sim.now_ms()) // DAY * DAY - DAY  # the bar that just closed by the venue's clock
                    # The second plan's price is 1.5% under the exchange's, inside the 2% guard: a cap checked at
                    # the plan's price (with the quantity in coins) would spend 1,015 USDT.
                    qty, price = (90 * 1000 / btc, btc / 90) if n == 0 else (1.0, btc * 0.985)
                    before = usdt()
                    basis = (await snapshot(js["operator"])).snapshot_id
                    body = await publish_buy(js["risk"], settings, cycle_id_for("1d", as_of), basis, qty=qty,
                                             price=price)

                    async def done(plan_id: str = body.plan_id) -> PortfolioSnapshot | None:
                        snap = await snapshot(js["operator"])
                        return snap if snap.plan_id == plan_id else None

                    outcomes += [await until(done, f"plan {n} to end in a snapshot", 60), before - usdt()]
                return outcomes[0], outcomes[1], outcomes[2], outcomes[3]

        guarded, spent_guarded, capped, spent_capped = asyncio.run(scenario())
    assert spent_guarded == 0.0 and guarded.holdings.get("BTC/USDT", 0.0) == 0.0, (guarded.status, spent_guarded)
    assert 900.0 <= spent_capped <= 1000.0, spent_capped
    assert capped.holdings.get("BTC/USDT", 0.0) == pytest.approx(spent_capped / prices[1], rel=0.02)
