"""The live executor trades on the exchange's market rules as they are now, not as they were at its start.

Issue 9: market rules come from the exchange, "refreshed at least daily".  The executor read them once at boot
(and ccxt answered every later read from its cache), so a pair listed after the start had no rule (its legs
skipped "no market rules") and a changed minimum notional or step size was ignored.  Here the real service
body runs live on a real bus against the simulator, whose rules change while the executor runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import Fault, SimServer
from tests.bus_helpers import Capture, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import closed_by, intents, live_settings, publish_plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]




def set_min_notional(sim: SimServer, symbol: str, value: str) -> None:
    with sim.sim.lock:
        rules = sim.sim.market.rules
        rules[symbol] = dataclasses.replace(rules[symbol], min_notional=Decimal(value))


def test_rules_changed_or_listed_at_the_exchange_after_the_start_are_used(nats_server: NatsEndpoint,
                                                                          sim: SimServer) -> None:
    settings = live_settings(nats_server, sim, AURA_MARKETS_REFRESH_S="3600")
    capture = Capture()
    set_min_notional(sim, "BTCUSDT", "1000")  # what the executor reads at boot: 0.01 BTC (~420 USDT) too small
    sim.sim.market.delisted.add("ETHUSDT")  # not yet listed when the executor starts

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            out: dict[str, Any] = {}

            async def trade(cycle: str, *legs: tuple[str, str, float]) -> Any:
                basis = (await snapshot(js["operator"])).snapshot_id
                body = await publish_plan(js["risk"], settings, sim, cycle, basis, *legs)
                await until(closed_by(js["operator"], body), f"plan {cycle} to be journaled", timeout=60)
                return body

            out["boot_rule"] = await trade("1d-a", ("BTC/USDT", "buy", 0.01))
            # The venue lowers the minimum; within the refresh interval the rules in force stand.
            set_min_notional(sim, "BTCUSDT", "5")
            out["cached"] = await trade("1d-b", ("BTC/USDT", "buy", 0.01))
            reloads_before = health.counters.get("markets_reloads", 0)
            sim.sim.advance(1)  # a day of market time later: the rules are due
            out["due"] = await trade("1d-c", ("BTC/USDT", "buy", 0.01))
            out["due_reloads"] = health.counters.get("markets_reloads", 0) - reloads_before
            # A pair listed since the last read: the plan naming it makes the executor read the rules again.
            sim.sim.market.delisted.discard("ETHUSDT")
            out["listed"] = await trade("1d-d", ("ETH/USDT", "buy", 0.1))
            # The exchange's rules unreadable when due: the rules in force are kept and the plan trades on them.
            sim.sim.faults.add(Fault("http_error", "GET", "/api/v3/exchangeInfo", count=None, status=503))
            sim.sim.advance(1)
            out["kept"] = await trade("1d-e", ("BTC/USDT", "buy", 0.01))
            sim.sim.faults.clear()
            return out

    out = asyncio.run(scenario())
    (_, status, reason), = intents(settings, out["boot_rule"])
    assert status == "skipped" and "min 1000.0" in reason, (status, reason)
    (_, status, reason), = intents(settings, out["cached"])
    assert status == "skipped" and "min 1000.0" in reason, "reloaded before the rules were due"
    assert [i[:2] for i in intents(settings, out["due"])] == [("BTC/USDT", "filled")], "the new minimum was ignored"
    assert out["due_reloads"] == 1
    assert [i[:2] for i in intents(settings, out["listed"])] == [("ETH/USDT", "filled")], \
        "a pair listed after the start was not traded"
    assert float(sim.sim.free("ETH")) > 0
    assert [i[:2] for i in intents(settings, out["kept"])] == [("BTC/USDT", "filled")]
    reloads = capture.fields("MARKETS")
    assert any(f.get("reason") == "due" and f.get("changed") == ["BTC/USDT"] for f in reloads), reloads
    assert any(f.get("reason") == "no rule for ETH/USDT" and f.get("added") == ["ETH/USDT"] for f in reloads), \
        reloads
    kept = [f for f in reloads if "keeping the rules in force" in f["msg"]]
    assert kept and kept[0]["reason"] == "due" and kept[0]["symbols"] == 2 and kept[0]["error"], reloads
