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
DAY, HOUR = 86_400_000, 3_600_000




def set_min_notional(sim: SimServer, symbol: str, value: str) -> None:
    with sim.sim.lock:
        rules = sim.sim.market.rules
        rules[symbol] = dataclasses.replace(rules[symbol], min_notional=Decimal(value))


def test_rules_changed_or_listed_at_the_exchange_after_the_start_are_used(nats_server: NatsEndpoint,
                                                                          sim: SimServer) -> None:
    settings = live_settings(nats_server, sim, AURA_MARKETS_REFRESH_S="86400")
    capture = Capture()
    set_min_notional(sim, "BTCUSDT", "1000")  # what the executor reads at boot: 0.01 BTC (~420 USDT) too small
    sim.sim.market.delisted.add("ETHUSDT")  # not yet listed when the executor starts
    # Market time: the executor trades a bar once, so each plan below is a later bar's, at a chosen hour of its
    # day, against rules due once a day.  It boots at 20:00 of day 0.
    day0 = int(sim.sim.now_ms()) // DAY * DAY
    sim.sim.set_now(day0 + 20 * HOUR)

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            out: dict[str, Any] = {}

            async def trade(*legs: tuple[str, str, float], day: int, hour: int) -> Any:
                if (day, hour) != (0, 20):  # day 0, 20:00 is where it booted
                    sim.sim.set_now(day0 + day * DAY + hour * HOUR)
                basis = (await snapshot(js["operator"])).snapshot_id
                body = await publish_plan(js["risk"], settings, sim, basis, *legs)
                await until(closed_by(js["operator"], body), f"plan {body.cycle_id} to be journaled", timeout=60)
                return body

            out["boot_rule"] = await trade(("BTC/USDT", "buy", 0.01), day=0, hour=20)
            # The venue lowers the minimum; within the refresh interval the rules in force stand.
            set_min_notional(sim, "BTCUSDT", "5")
            reloads_before = health.counters.get("markets_reloads", 0)
            out["cached"] = await trade(("BTC/USDT", "buy", 0.01), day=1, hour=1)  # 5 h after the boot's read
            out["due"] = await trade(("BTC/USDT", "buy", 0.01), day=2, hour=20)  # 48 h after it: due
            out["due_reloads"] = health.counters.get("markets_reloads", 0) - reloads_before
            # A pair listed since the last read (5 h ago): the plan naming it makes the executor read them again.
            sim.sim.market.delisted.discard("ETHUSDT")
            out["listed"] = await trade(("ETH/USDT", "buy", 0.1), day=3, hour=1)
            # The exchange's rules unreadable when due: the rules in force are kept and the plan trades on them.
            sim.sim.faults.add(Fault("http_error", "GET", "/api/v3/exchangeInfo", count=None, status=503))
            out["kept"] = await trade(("BTC/USDT", "buy", 0.01), day=4, hour=6)  # 29 h after the last read
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
