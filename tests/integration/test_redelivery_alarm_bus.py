"""On a real nats-server: a message its consumer keeps failing on turns that consumer's /readyz red, with the
stream sequence and the deliveries, before it is given up on, and green again once it is dead-lettered.

The unit tests (tests/unit/test_redelivery_alarm.py) script the deliveries; this one checks what they assume of
the server: the delivery count it reports on each NAK'd redelivery, and that a terminated message no longer
counts as pending, so the alarm clears by itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from shared import consumer
from shared.bus import durable_pull
from shared.consumer import MAX_DELIVERIES, REDELIVERY_ALARM, RedeliveryAlarm, handle, pull_loop
from shared.contracts import CONSUMERS, DataReady, encode
from shared.health import HealthState
from shared.service import ServiceContext
from tests.bus_helpers import dead_letters, role_connections, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
DAY = 86_400_000


def test_a_message_the_consumer_keeps_failing_on_turns_readyz_red_then_green(nats_server: NatsEndpoint,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert REDELIVERY_ALARM < MAX_DELIVERIES, "the alarm must sound before the message is dead-lettered"
    # A quarter of the service's back-off: the same deliveries in 5 s, not 20, and still 2 s between the fourth and
    # the fifth, longer than pull_loop's fetch timeout, so the alarm's clearing check runs while the message waits.
    monkeypatch.setattr(consumer, "RETRY_STEP_S", consumer.RETRY_STEP_S / 4)
    settings = nats_server.settings()
    health = HealthState("signal", bus_connected=True)
    seen: list[int] = []

    async def failing(ready: DataReady) -> None:
        seen.append(len(seen) + 1)
        raise RuntimeError("the candle store is unreachable")  # not a Reject: retried, then dead-lettered

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "ingest", "signal", "operator") as js:
            ctx = ServiceContext("signal", settings, logging.getLogger("aura.test.signal"), js["signal"]._nc,
                                 js["signal"], health, asyncio.Event())
            alarm = RedeliveryAlarm(health, "signal")
            sub = await durable_pull(js["signal"], CONSUMERS["signal"])
            loop = asyncio.create_task(pull_loop(sub, lambda m: handle(ctx, m, DataReady, failing), ctx.stop,
                                                 ctx.logger, alarm))
            try:
                green_before = health.readiness()[0]
                ready = DataReady(cycle_id="1d-20240102T0000", timeframe="1d", as_of_ms=4 * DAY, digest="0" * 64,
                                  symbols=["BTC/USDT"], bars=5, markets=[])
                ack = await js["ingest"].publish(DataReady.SUBJECT, encode(ready))

                async def red() -> str | None:
                    ok, detail = health.readiness()
                    return None if ok else detail["consumer_signal"]

                why = await until(red, "the consumer to turn red", timeout=60)
                deliveries_when_red = len(seen)
                # Red for as long as the message waits for its next delivery: a NAK'd message still counts as
                # pending on the server (what the alarm's clearing relies on), until the last delivery settles it.
                green_while_stuck = False
                while len(seen) < MAX_DELIVERIES:
                    green_while_stuck = green_while_stuck or health.readiness()[0]
                    await asyncio.sleep(0.02)

                async def green() -> bool:
                    return health.readiness()[0]

                await until(green, "the consumer to turn green once the message is dead-lettered", timeout=60)
                letters = [x for x in await dead_letters(js["operator"], "signal") if x.reason == "handler_failed"]
            finally:
                ctx.stop.set()
                await loop
            return {"before": green_before, "why": why, "red_at": deliveries_when_red, "seq": ack.seq,
                    "letters": letters, "deliveries": len(seen),
                    "green_while_stuck": green_while_stuck}

    out = asyncio.run(scenario())
    assert out["before"], "the consumer was red before anything failed"
    assert out["why"] == f"message at stream seq {out['seq']} delivered {REDELIVERY_ALARM + 1} times and still not " \
                         "settled", out["why"]
    assert out["red_at"] == REDELIVERY_ALARM + 1
    assert not out["green_while_stuck"], "the alarm cleared while the message was still waiting for redelivery"
    assert out["deliveries"] == MAX_DELIVERIES, "the message was not given up on at the last delivery"
    assert len(out["letters"]) == 1 and f"after {MAX_DELIVERIES} deliveries" in out["letters"][0].error
