"""A consumer that keeps seeing the same message turns /readyz red, with the reason, and green again once the
message is settled; a refused message that cannot be dead-lettered is terminated after a bounded number of
deliveries instead of blocking its consumer forever."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from shared.bus import DEAD_LETTER_MAX_TRIES, settle_refused
from shared.consumer import REDELIVERY_ALARM, RedeliveryAlarm, pull_loop
from shared.health import HealthState


def msg(seq: int, delivered: int) -> Any:
    calls: list[str] = []

    async def nak(delay: float = 0) -> None:
        calls.append("nak")

    async def term() -> None:
        calls.append("term")

    return SimpleNamespace(subject="aura.plans.approved", data=b"x" * 10, calls=calls, nak=nak, term=term,
                           metadata=SimpleNamespace(num_delivered=delivered,
                                                    sequence=SimpleNamespace(stream=seq)))


class Sub:
    """A pull subscription that hands out scripted batches, then reports whether anything is pending."""

    def __init__(self, batches: list[list[Any]], pending_after: int) -> None:
        self.batches, self.pending_after = batches, pending_after

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.01)
        raise TimeoutError

    async def consumer_info(self) -> Any:
        return SimpleNamespace(num_ack_pending=self.pending_after)


def run_loop(sub: Sub, alarm: RedeliveryAlarm, seconds: float = 0.2) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()

        async def handler(m: Any) -> None:
            return None

        task = asyncio.create_task(pull_loop(sub, handler, stop, logging.getLogger("t"), alarm))  # type: ignore[arg-type]
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(scenario())


def test_a_message_delivered_too_often_turns_readiness_red_with_the_reason() -> None:
    health = HealthState("executor", bus_connected=True)
    alarm = RedeliveryAlarm(health, "executor")
    run_loop(Sub([[msg(7, n)] for n in range(1, REDELIVERY_ALARM + 2)], pending_after=1), alarm)
    ready, detail = health.readiness()
    assert not ready
    assert detail["consumer_executor"] == f"message at stream seq 7 delivered {REDELIVERY_ALARM + 1} times and " \
                                          "still not settled"


def test_readiness_turns_green_once_the_message_is_settled_or_a_new_one_flows() -> None:
    health = HealthState("executor", bus_connected=True)
    alarm = RedeliveryAlarm(health, "executor")
    run_loop(Sub([[msg(7, REDELIVERY_ALARM + 1)]], pending_after=0), alarm)  # then terminated: nothing pending
    assert health.readiness()[0]
    run_loop(Sub([[msg(8, REDELIVERY_ALARM + 1)], [msg(9, 1)]], pending_after=1), alarm)  # the next one flows
    assert health.readiness()[0]


def test_a_refused_message_that_cannot_be_dead_lettered_is_kept_then_terminated() -> None:
    early, last = msg(3, 1), msg(3, DEAD_LETTER_MAX_TRIES)
    asyncio.run(settle_refused(early, recorded=False, logger=logging.getLogger("t")))
    asyncio.run(settle_refused(last, recorded=False, logger=logging.getLogger("t")))
    assert early.calls == ["nak"], "an early delivery must come back: the dead letter may still be stored"
    assert last.calls == ["term"], "after the last try the consumer must move on"


class FailingSub(Sub):
    """A consumer that is gone: every fetch is refused (what a deleted durable answers), until ``heal()``."""

    def __init__(self) -> None:
        super().__init__([], 0)
        self.gone = True

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        if self.gone:
            await asyncio.sleep(0.01)
            raise RuntimeError("nats: ServiceUnavailableError: code=503 description='consumer not found'")
        return await super().fetch(batch, timeout)


def test_a_consumer_that_cannot_be_fetched_from_turns_readyz_red_and_green_again(monkeypatch: Any) -> None:
    """It once read "consuming" for ever: the loop logged each failed fetch and retried, /readyz stayed 200."""
    import shared.consumer

    # 2 s: the short run below lasts ~0.51 s (the loop's 0.5 s pause after a failed fetch), so a stall of the
    # machine up to 1.5 s cannot make it an alarm (at 1 s a 0.5 s stall could); the long run takes the failure
    # past it, counted from the first failed fetch.
    monkeypatch.setattr(shared.consumer, "FETCH_FAILING_RED_S", 2.0)
    health = HealthState(service="executor")
    alarm = RedeliveryAlarm(health, "executor")
    sub = FailingSub()
    run_loop(sub, alarm, seconds=0.1)
    assert alarm.check()[0], "a failure shorter than a reconnect is not an alarm"
    run_loop(sub, alarm, seconds=1.6)
    ok, why = alarm.check()
    assert not ok and "consumer not found" in why and "failed for" in why, why
    assert not health.readiness()[0]
    sub.gone = False
    run_loop(sub, alarm, seconds=0.2)
    assert alarm.check() == (True, "consuming")
