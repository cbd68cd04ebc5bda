"""An order the executor cannot settle holds its plan until the operator settles it (`aura journal settle`).

The live executor's real service body on a real bus, against the simulator.  A buy half fills and stays working;
from then on the exchange answers every lookup and cancel of it with "no such order" (-2013).  The executor never
places it again (the exchange acknowledged it: tests/executor_live/test_unsettled_orders.py), so the plan waits,
/readyz red, and every later plan behind it.  Before this there was no way out but editing the journal by hand;
now the operator's signed request closes it as canceled with no fills, and the plan goes on.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import Fault, SimServer
from services.executor import service as executor_service
from services.executor.brokers.client_order_id import client_order_id
from services.executor.exchange_calls import ExecutionLimits
from tests.bus_helpers import Capture, journal_rows, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import closed_by, intents, live_settings, publish_plan
from tests.integration.test_cli_params import aura

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
NOT_FOUND = '{"code":-2013,"msg":"Order does not exist."}'


def test_an_order_nothing_can_settle_waits_for_the_operator_and_only_then_closes(
        nats_server: NatsEndpoint, sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_service, "RETRY_BASE_S", 0.05)
    monkeypatch.setattr(executor_service, "ExecutionLimits", functools.partial(
        ExecutionLimits, backoff_s=0.01, max_attempts=2, fill_poll_s=0.02, fill_timeout_s=0.3))
    settings = live_settings(nats_server, sim)
    capture = Capture()
    sim.sim.configure(market_fill_chunks=2, fill_on_query=False)  # a market order half fills, then works on

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            basis = (await snapshot(js["operator"])).snapshot_id
            for method in ("GET", "DELETE"):
                sim.sim.faults.add(Fault("http_error", method, "/api/v3/order", count=None, status=400,
                                         body=NOT_FOUND))
            body = await publish_plan(js["risk"], settings, sim, basis, ("ETH/USDT", "buy", 0.2))
            cid = client_order_id(body.plan_id, 0)

            async def waiting() -> tuple[bool, dict[str, str]] | None:
                ready = health.readiness()
                return ready if "acknowledged by the exchange" in ready[1].get("exchange", "") else None

            during = await until(waiting, "the plan to wait on the order nothing can settle", timeout=60)
            status_during = intents(settings, body)
            await asyncio.sleep(1.0)  # several more deliveries: still nothing placed again
            posts_during = sim.sim.faults.counts().get("POST /api/v3/order", 0)
            proc = await asyncio.to_thread(aura, nats_server, "journal", "settle", cid, "--reason",
                                           "checked on the exchange: half filled, the rest canceled by hand")
            snap = await until(closed_by(js["operator"], body), "the plan to close once settled", timeout=60)
            return {"during": during, "status_during": status_during, "posts": posts_during, "proc": proc,
                    "snap": snap, "body": body, "cid": cid,
                    "posts_after": sim.sim.faults.counts().get("POST /api/v3/order", 0)}

    out = asyncio.run(scenario())
    ok, detail = out["during"]
    assert not ok and detail["exchange"].startswith("an order cannot be settled") and "not placed again" in \
        detail["exchange"], detail
    assert [i[:2] for i in out["status_during"]] == [("ETH/USDT", "acked")]
    assert out["posts"] == out["posts_after"] == 1, "the order was placed again"
    assert out["proc"].returncode == 0 and "settle requested" in out["proc"].stderr, out["proc"].stderr
    [(_, status, reason)] = intents(settings, out["body"])
    assert status == "canceled" and reason.startswith("settled by operator:"), reason
    assert out["snap"].status == "partial" and out["snap"].holdings.get("ETH/USDT", 0) > 0  # its half fill kept
    settled = journal_rows(settings, "SELECT detail FROM events WHERE kind='operator_settled'")
    assert len(settled) == 1 and out["cid"] in settled[0][0] and '"was": "acked"' in settled[0][0]
    assert any(f.get("cid") == out["cid"] for f in capture.fields("RECONCILE"))
