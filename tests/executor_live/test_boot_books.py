"""/readyz never says the books agree before they were compared (issue 9, the journal against the exchange).

The live executor's real body on a real bus, against the simulator.  The boot compares the journal with the
exchange only once recovery finished what a crash interrupted (its orders are on the exchange before they are
in the journal).  When the exchange failed that recovery, the comparison was skipped and /readyz said "journal ==
exchange" until the next new plan, a day later on daily bars.  Now it is red, saying so, and the comparison runs
as soon as the interrupted plan finishes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import Fault, SimServer
from services.executor.brokers.client_order_id import client_order_id
from services.executor.journal import Journal
from shared.contracts import canonical_bytes
from tests.bus_helpers import role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import closed_by, live_settings, publish_plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_books_left_uncompared_at_boot_are_red_until_the_interrupted_plan_finishes(nats_server: NatsEndpoint,
                                                                                   sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js:
            async with running(settings, "executor"):
                basis = (await snapshot(js["operator"])).snapshot_id
            # The executor stopped while working on this plan: journaled executing, its buy sent.
            body = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))
            journal = Journal(settings.journal_path)
            journal.begin()
            journal.record_plan(body.plan_id, body.cycle_id, body.gate, body.params_version, body.basis_snapshot_id,
                                canonical_bytes(body).decode(), body.reasons, status="executing")
            leg = body.legs[0]
            journal.record_intent(client_order_id(body.plan_id, 0), body.cycle_id, body.plan_id, 0, leg.symbol,
                                  leg.side, leg.qty, leg.ref_price, status="sent")
            journal.commit()
            journal.close()
            # The exchange answers everything but order lookups: the boot cannot settle the sent leg.
            sim.sim.faults.add(Fault("http_error", "GET", "/api/v3/order", count=None, status=503))
            async with running(settings, "executor", await_genesis=False) as services:
                health = services["executor"].health

                async def booted() -> Any:
                    return health.readiness() if "books" in health.readiness()[1] else None

                during = await until(booted, "the executor to boot", timeout=60)
                await asyncio.sleep(1.0)  # the plan's deliveries fail on the lookups meanwhile
                still = health.readiness()
                sim.sim.faults.clear()
                closed = await until(closed_by(js["operator"], body), "the interrupted plan to finish", timeout=90)

                async def green() -> Any:
                    ready = health.readiness()
                    return ready if ready[1]["books"] == "journal == exchange" else None

                after = await until(green, "the books compared after the plan", timeout=30)
                return {"during": during, "still": still, "closed": closed, "after": after}

    out = asyncio.run(scenario())
    for moment in ("during", "still"):
        ok, checks = out[moment]
        assert not ok and checks["books"].startswith("not compared with the exchange yet"), (moment, checks)
    assert out["closed"].status == "executed" and out["closed"].holdings.get("BTC/USDT", 0) > 0
    assert out["after"][1]["books"] == "journal == exchange"
