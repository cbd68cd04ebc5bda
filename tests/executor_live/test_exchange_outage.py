"""An exchange outage before a plan starts never drops the plan (issue 9: only faults of the plan's content are
dead-lettered).

The live executor's real service body on a real bus, against the simulator: its balance endpoint, then its
clock, answer 503 for longer than MAX_DELIVERIES deliveries.  A signed plan (it could be a stop-loss exit)
waits through it, redelivered with backoff, /readyz red with the reason, and trades once the exchange answers;
nothing is dead-lettered or journaled as rejected.  The waits inside one delivery (balance re-reads, backoff)
are shortened so the outage spans many deliveries in a few seconds; the code path is the production one.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import Fault, SimServer
from services.executor import books
from services.executor import service as executor_service
from services.executor.exchange_calls import ExecutionLimits
from services.executor.runner import SyncCheck
from shared.consumer import MAX_DELIVERIES
from tests.bus_helpers import Capture, dead_letters, journal_rows, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import closed_by, intents, live_settings, publish_plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]




@pytest.fixture()
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter waits inside one delivery and between deliveries; every check and its order unchanged."""
    monkeypatch.setattr(executor_service, "RETRY_BASE_S", 0.05)
    monkeypatch.setattr(executor_service, "ExecutionLimits", functools.partial(ExecutionLimits, backoff_s=0.01,
                                                                                max_attempts=2))
    monkeypatch.setattr(executor_service, "SyncCheck", functools.partial(SyncCheck, delay_s=0.02))
    monkeypatch.setattr(books, "confirmed_balances", functools.partial(books.confirmed_balances, delay_s=0.02,
                                                                       max_reads=3))


def failed_deliveries(capture: Capture) -> int:
    """The highest delivery of a plan that failed on the exchange ([EXCHANGE_DOWN] lines)."""
    return max([int(f.get("delivery", 0)) for f in capture.fields("EXCHANGE_DOWN")], default=0)


def test_a_plan_waits_through_an_exchange_outage_and_trades_after_it(nats_server: NatsEndpoint, sim: SimServer,
                                                                     quick_retries: None) -> None:
    settings = live_settings(nats_server, sim)
    capture = Capture()

    def deliveries() -> int:
        return failed_deliveries(capture)

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            seen: list[tuple[bool, dict[str, str]]] = []

            async def outage_lasts(n: int) -> bool:
                seen.append(health.readiness())
                return deliveries() >= n

            basis = (await snapshot(js["operator"])).snapshot_id
            for path in ("/api/v3/account", "/api/v3/time"):  # balances first, then the exchange's clock
                sim.sim.faults.add(Fault("http_error", "GET", path, count=None, status=503))
            body = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))
            await until(lambda: outage_lasts(MAX_DELIVERIES + 1), "deliveries past MAX_DELIVERIES", timeout=90)
            sim.sim.faults.clear("/api/v3/account")  # balances answer; the clock still does not
            await until(lambda: outage_lasts(MAX_DELIVERIES + 3), "deliveries failing on the clock", timeout=90)
            during = health.readiness()
            letters_during = await dead_letters(js["operator"], "executor")
            sim.sim.faults.clear()
            snap = await until(closed_by(js["operator"], body), "the plan to trade after the outage", timeout=90)
            return {"seen": seen, "during": during, "letters_during": letters_during, "snap": snap, "body": body,
                    "after": health.readiness()[1]["exchange"],
                    "letters": await dead_letters(js["operator"], "executor")}

    out = asyncio.run(scenario())
    assert out["letters_during"] == [] and out["letters"] == [], "a plan was dead-lettered for an exchange outage"
    assert out["snap"].status == "executed" and out["snap"].holdings.get("BTC/USDT", 0) > 0
    assert [i[:2] for i in intents(settings, out["body"])] == [("BTC/USDT", "filled")]
    assert journal_rows(settings, "SELECT count(*) FROM events WHERE kind='plan_rejected'") == [(0,)]
    # /readyz was red, naming the exchange, while it did not answer; green once it did.
    ok, detail = out["during"]
    assert not ok and detail["exchange"].startswith("exchange unreachable"), detail
    assert all(not ok for ok, d in out["seen"] if d["exchange"] != "reachable")
    assert out["after"] == "reachable"
    down = capture.fields("EXCHANGE_DOWN")
    failed = [f for f in down if "exchange unreachable" in f["msg"]]
    assert {f["plan_id"] for f in failed} == {out["body"].plan_id} and deliveries() >= MAX_DELIVERIES + 3
    assert any("balances" in f["error"] for f in failed) and any("clock" in f["error"] for f in failed), failed
    assert [f for f in down if "answers again" in f["msg"]], "no log line when the exchange answered again"


def test_a_key_the_exchange_refuses_holds_the_plan_until_it_is_accepted(nats_server: NatsEndpoint, sim: SimServer,
                                                                        quick_retries: None) -> None:
    """Binance's -2015 (key, IP or permissions refused; also what it answers during a temporary ban) is no
    verdict on the plan: a revoked key or an egress IP off the whitelist is fixed by an operator, and the signed
    plan (perhaps a stop-loss exit) must still be there.  It was dead-lettered after MAX_DELIVERIES."""
    settings = live_settings(nats_server, sim)
    capture = Capture()
    refused = '{"code":-2015,"msg":"Invalid API-key, IP, or permissions for action."}'

    def deliveries() -> int:
        return failed_deliveries(capture)

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            basis = (await snapshot(js["operator"])).snapshot_id
            sim.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", count=None, status=401, body=refused))
            body = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))

            async def past_max() -> bool:
                return deliveries() >= MAX_DELIVERIES + 1

            await until(past_max, "deliveries past MAX_DELIVERIES", timeout=90)
            during = health.readiness()
            letters_during = await dead_letters(js["operator"], "executor")
            sim.sim.faults.clear()
            snap = await until(closed_by(js["operator"], body), "the plan to trade once the key is accepted", 90)
            return {"during": during, "letters_during": letters_during, "snap": snap,
                    "letters": await dead_letters(js["operator"], "executor")}

    out = asyncio.run(scenario())
    assert out["letters_during"] == [] and out["letters"] == [], "a plan was dead-lettered over a refused key"
    ok, detail = out["during"]
    assert not ok and "rejected the credentials" in detail["exchange"], detail
    assert out["snap"].status == "executed" and out["snap"].holdings.get("BTC/USDT", 0) > 0


def test_an_exchange_down_at_boot_is_waited_for_not_a_crash(nats_server: NatsEndpoint, sim: SimServer,
                                                             quick_retries: None) -> None:
    """Boot needs the exchange (its rules, and its balances for the genesis): while it does not answer the
    executor waits with /readyz red, then boots; it never crashes into a supervisor's restart loop."""
    settings = live_settings(nats_server, sim)
    capture = Capture()
    sim.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", count=None, status=503))

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "operator") as js, \
                running(settings, "executor", handler=capture, await_genesis=False) as services:
            health = services["executor"].health

            async def waited() -> bool:
                return len([f for f in capture.fields("EXCHANGE_DOWN") if f.get("at") == "boot"]) >= 2

            await until(waited, "boot to be retried while the exchange is down", timeout=60)
            during = health.readiness()
            sim.sim.faults.clear()
            async def published() -> Any:
                try:
                    return await snapshot(js["operator"])
                except AssertionError:  # none yet
                    return None

            genesis = await until(published, "the genesis once the exchange answers", 60)
            return {"during": during, "genesis": genesis, "after": health.readiness()[1]["exchange"]}

    out = asyncio.run(scenario())
    ok, detail = out["during"]
    assert not ok and detail["exchange"].startswith("exchange unreachable"), detail
    assert out["genesis"].status == "genesis" and out["genesis"].cash == 10_000.0
    assert out["after"] == "reachable"
