"""A failed send is tried again, not lost.  Found by an audit: a kill-switch alert whose send failed once (the chat
service down for a moment) was only counted "failed": its event was acknowledged and a redelivery deduplicated, so
it was never sent.  Now it is tried again after each of RETRY_DELAYS_S, then given up (logged and counted)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.console.notify import Alert, Notifier
from shared.health import HealthState


def notifier(outcomes: list[bool]) -> tuple[Notifier, list[str]]:
    n = Notifier(["json://127.0.0.1:9/x"], 600, 20, 600, HealthState(service="console"), logging.getLogger("t"))
    n.retry_delays_s = (0.05, 0.05)
    calls: list[str] = []
    answers = iter(outcomes)
    n.apprise.notify = lambda **kw: calls.append(kw["title"]) or next(answers)  # type: ignore[method-assign]
    return n, calls


def drive(n: Notifier, alert: Alert, seconds: float) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(n.run(stop))
        assert n.offer(alert) == "queued"
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(run())


def test_an_alert_that_failed_once_is_sent_on_the_retry() -> None:
    n, calls = notifier([False, True])
    drive(n, Alert("latch:1", "AURA kill-switch latched", "drawdown 21%", "error"), 1.5)
    assert calls == ["AURA kill-switch latched"] * 2
    assert not n.failures


def test_a_retry_that_finds_the_queue_full_is_said_and_stopping_with_retries_waiting_is_said(
        caplog: pytest.LogCaptureFixture) -> None:
    n, _ = notifier([False])
    alert = Alert("latch:3", "AURA kill-switch latched", "drawdown 21%", "error")
    n.targets = 1
    while n.queue.qsize() < n.queue.maxsize:
        n.queue.put_nowait(Alert(f"x{n.queue.qsize()}", "filler", "", "info"))
    with caplog.at_level(logging.ERROR, logger="t"):
        n.failures[alert.key] = 1
        n._retry_now(alert)
    assert not n.failures and any("retry not queued" in r.getMessage() for r in caplog.records)

    n, calls = notifier([False])
    n.retry_delays_s = (60.0,)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="t"):
        drive(n, Alert("latch:4", "AURA kill-switch latched", "drawdown 21%", "error"), 0.5)
    assert calls == ["AURA kill-switch latched"]
    assert any("waiting for a retry" in r.getMessage() for r in caplog.records)


def test_an_alert_failing_every_time_is_given_up_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    n, calls = notifier([False, False, False, True])
    with caplog.at_level(logging.ERROR, logger="t"):
        drive(n, Alert("latch:2", "AURA kill-switch latched", "drawdown 21%", "error"), 2.5)
    assert len(calls) == 3  # the first try and two retries, then given up
    assert not n.failures
    assert any("given up after every retry" in r.getMessage() for r in caplog.records)
