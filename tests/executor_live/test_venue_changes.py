"""The venue changes under a running live executor: a pair delisted, its clock stepped, a long Retry-After (issue 9).

The live executor's real body on a real bus, against the simulator.  Each of these once stopped trading with
/readyz green or misleading until a restart:

* A pair the journal never traded left the exchange.  The book check before a plan prices every asset of the
  account; ccxt still had the pair in its cached markets, Binance refuses a whole ticker request naming an unknown
  symbol (-1121), and every later plan (a stop-loss exit as much as any) was dead-lettered.
* The exchange's clock stepped 20 s after boot (an NTP step): ccxt measures the offset only with the markets, so
  every signed request was refused (-1021) until a restart.
* A 429 asking for 120 s of quiet: the request loops capped the wait at 30 s and asked again inside the ban, which
  Binance escalates to an IP ban.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import Fault, SimServer
from services.executor.brokers.base import RateLimitedError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.execution import execute_plan
from services.executor.runner import run_plan
from tests.bus_helpers import Capture, dead_letters, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.executor_live.conftest import LIMITS, Rig
from tests.executor_live.live_service import closed_by, intents, live_settings, publish_plan
from tests.executor_live.test_exchange_outage import quick_retries  # noqa: F401 - a fixture
from tests.executor_live.test_live_guards import LIVE, plan_at

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.usefixtures("quick_retries")
def test_a_pair_delisted_elsewhere_stops_no_plan(nats_server: NatsEndpoint, sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)
    capture = Capture()

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture):
            basis = (await snapshot(js["operator"])).snapshot_id
            first = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))
            after_first = await until(closed_by(js["operator"], first), "the first plan", timeout=60)
            sim.sim.market.delisted.add("ETHUSDT")  # a pair the journal never traded leaves the exchange
            second = await publish_plan(js["risk"], settings, sim, after_first.snapshot_id,
                                        ("BTC/USDT", "sell", 0.005), tick=True)
            after_second = await until(closed_by(js["operator"], second), "the BTC sell", timeout=60)
            return {"status": after_second.status, "letters": await dead_letters(js["operator"], "executor"),
                    "intents": intents(settings, second)}

    out = asyncio.run(scenario())
    assert out["letters"] == [], [letter.error[:200] for letter in out["letters"]]
    assert out["intents"] and all(status == "filled" for _, status, _ in out["intents"]), out["intents"]
    assert not capture.fields("EXEC_ERROR"), capture.fields("EXEC_ERROR")[:2]
    assert capture.fields("MARKETS"), "the delisting is said"


def test_a_pair_delisted_before_its_plan_is_skipped_and_the_rest_trades(rig: Rig) -> None:
    """The markets were read before the pair went: its leg is skipped as unlisted (never looked up, sent, or left
    waiting for an operator), the other leg trades, the plan ends."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc), ("ETH/USDT", "buy", 0.1, eth)])
    out: dict[str, Any] = {}

    async def scenario(broker: CcxtBroker) -> None:
        rules = await broker.load_markets()
        rig.server.sim.market.delisted.add("ETHUSDT")
        run = await run_plan(plan, broker, rig.journal, rules, LIMITS, rig.log, {}, live=LIVE)
        out["status"], out["reasons"] = run.status, run.reasons
        out["unlisted"] = broker.unlisted(["ETH/USDT", "BTC/USDT"])

    rig.run(scenario)
    assert out["status"] == "partial" and any("ETH/USDT" in r for r in out["reasons"]), out
    assert out["unlisted"] == ["ETH/USDT"]
    assert rig.journal.plan_status(plan.plan_id) == "partial"
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"]

    async def finished_after_a_restart(b: CcxtBroker) -> str:  # its legs final, the plan's status not yet written
        return (await execute_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log)).status

    assert rig.run(finished_after_a_restart) == "partial"  # the skipped leg still counts (found by a review)


@pytest.mark.usefixtures("quick_retries")
def test_a_clock_stepped_after_boot_is_measured_again(nats_server: NatsEndpoint, sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)
    capture = Capture()

    async def scenario() -> float:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture):
            basis = (await snapshot(js["operator"])).snapshot_id
            first = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))
            after_first = await until(closed_by(js["operator"], first), "the first plan", timeout=60)
            sim.sim.configure(clock_skew_ms=-20_000)  # the exchange's clock now 20 s behind ours, unlike at boot
            started = time.monotonic()
            # A risk tick's sell (the bar's one buying plan ran): signed requests all the same.
            second = await publish_plan(js["risk"], settings, sim, after_first.snapshot_id,
                                        ("BTC/USDT", "sell", 0.005), tick=True)
            await until(closed_by(js["operator"], second), "the plan after the clock step", timeout=30)
            return time.monotonic() - started

    took = asyncio.run(scenario())
    assert capture.fields("CLOCK"), "the offset is measured again, and said"
    assert took < 30


def test_no_request_reaches_the_exchange_before_its_retry_after(rig: Rig) -> None:
    """A 429 asking for 120 s of quiet: every request loop stops at the broker, unsent, until the time is up."""
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc)])
    out: dict[str, Any] = {}

    async def scenario(broker: CcxtBroker) -> None:
        rules = await broker.load_markets()
        before = sum(rig.server.sim.request_counts().values())
        rig.server.sim.faults.add(Fault("rate_limit", path="*", count=1, retry_after_s=120))
        try:
            await asyncio.wait_for(run_plan(plan, broker, rig.journal, rules, LIMITS, rig.log, {}, live=LIVE), 20)
        except Exception as exc:  # the plan waits (redelivered later): it must not have asked again meanwhile
            rig.journal.rollback()
            out["error"] = exc
        out["requests"] = sum(rig.server.sim.request_counts().values()) - before
        try:
            await broker.fetch_time()
        except RateLimitedError as exc:
            out["quiet_left_s"] = exc.retry_after_s

    rig.run(scenario)
    assert isinstance(out.get("error"), RateLimitedError | TimeoutError), out
    assert out["requests"] == 1, f"{out['requests']} requests reached the exchange inside its 120 s Retry-After"
    assert 60 < out["quiet_left_s"] <= 120


# Binance's duplicate check covers open orders only: a closed order's id is accepted again.
@pytest.mark.parametrize("rig", [{"duplicate_scope": "open"}], indirect=True)
def test_an_order_whose_fills_cannot_be_read_is_looked_up_never_sent_again(rig: Rig) -> None:
    """The exchange booked the market order, then reading its fills was rate limited: the order is looked up by its
    clientOrderId, never placed a second time (Binance accepts the same id again once the first order is closed)."""
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc)])

    async def scenario(broker: CcxtBroker) -> str:
        state = broker._state
        calls = {"n": 0}

        async def rate_limited_once(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RateLimitedError("429 on the order's trades", retry_after_s=0.0)
            return await state(*args, **kwargs)

        broker._state = rate_limited_once  # type: ignore[method-assign]
        run = await run_plan(plan, broker, rig.journal, await broker.load_markets(), LIMITS, rig.log, {}, live=LIVE)
        return run.status

    assert rig.run(scenario) == "executed"
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"], "the order was sent twice"
    assert rig.journal.db.execute("SELECT count(*) FROM fills").fetchone()[0] >= 1
