"""Alerts end to end on a running system, into a local webhook (apprise's ``json://``): a real service event
becomes exactly one notification, an incident said again within the window is sent once (another one is sent), a
burst is rate-limited and summed up, and a service down longer than the setting is alerted, once per outage.  The
console itself holds only its own read-only credential.  The tests run in file order on one system (the last two
stop a service)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aura.launcher import start_service
from shared.bus import publish
from shared.contracts import DataReady, ServiceEvent, content_id
from tests.bus_helpers import role_connections, stream_messages
from tests.console.conftest import ConsoleSystem, Webhook, start_system, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
LIMIT, WINDOW_S, DOWN_AFTER_S = 5, 6.0, 3.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[ConsoleSystem]:
    system = start_system(tmp_path_factory.mktemp("alerts") / "home", "2024-11-26", 0.1,
                          AURA_NOTIFY_URLS=webhook.url, AURA_NOTIFY_DEDUP_S="600",
                          AURA_NOTIFY_RATE_LIMIT=str(LIMIT), AURA_NOTIFY_RATE_WINDOW_S=str(WINDOW_S),
                          AURA_NOTIFY_DOWN_AFTER_S=str(DOWN_AFTER_S), AURA_NOTIFY_SUMMARY_HOUR_UTC="-1")
    try:
        wait_until(lambda: system.cycles() >= 9, "the replay's cycles", timeout=120)
        yield system
    finally:
        system.stack.stop()
        system.server.stop()


def publish_as(system: ConsoleSystem, principal: str, subject: str, payload: bytes) -> None:
    async def go() -> None:
        async with role_connections(system.settings, principal) as js:
            await js[principal].publish(subject, payload, timeout=5)

    asyncio.run(go())


def events_as(system: ConsoleSystem, service: str, texts: list[str], kind: str = "RECONCILE",
              fields: Callable[[int], dict[str, str]] = lambda i: {"n": str(i)}) -> None:
    """Play ``service`` (its own credential) publishing events, as its event bridge would; the i-th has
    ``fields(i)``."""
    async def go() -> None:
        async with role_connections(system.settings, service) as js:
            for i, text in enumerate(texts):
                body = {"service": service, "kind": kind, "severity": "error", "text": text,
                        "at_ms": int(time.time() * 1000) + i, "fields": fields(i)}
                event = ServiceEvent(event_id=content_id(body, prefix="e-"), **body)
                await publish(js[service], event, msg_id=event.event_id)

    asyncio.run(go())


def counter(system: ConsoleSystem, name: str, **labels: str) -> float:
    text = httpx.get(f"{system.url}/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == f"aura_{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_console_is_on_the_bus_as_itself(system: ConsoleSystem) -> None:
    """Its connection is the console's credential, the read-only principal (tests/security walks its rights)."""
    lines = (system.stack.logs / "console.log").read_text()
    assert '"principal":"console"' in lines and '"principal":"operator"' not in lines


def test_a_service_event_becomes_exactly_one_notification(system: ConsoleSystem, webhook: Webhook) -> None:
    # A malformed DataReady (as ingest, the only one allowed to publish it): signal refuses it and dead-letters it,
    # its [DEAD_LETTER] log line becomes an event on aura.events.signal, the console sends it.
    before = len(webhook.titled("AURA signal: DEAD_LETTER"))
    publish_as(system, "ingest", DataReady.SUBJECT, b'{"v": 1, "not": "a DataReady"}')
    wait_until(lambda: len(webhook.titled("AURA signal: DEAD_LETTER")) > before, "the dead-letter alert", 60)
    time.sleep(3)  # nothing more comes for it
    sent = webhook.titled("AURA signal: DEAD_LETTER")[before:]
    assert len(sent) == 1, sent
    assert sent[0]["type"] == "failure" and "malformed" in sent[0]["message"].lower()

    async def stored() -> list[bytes]:
        async with role_connections(system.settings, "operator") as js:
            return await stream_messages(js["operator"], "aura.events.signal")

    assert any(b"DEAD_LETTER" in raw for raw in asyncio.run(stored())), "the event is on the bus"


def test_duplicates_within_the_window_are_sent_once(system: ConsoleSystem, webhook: Webhook) -> None:
    """One incident (its cycle names it) said three times is sent once; the same words about another cycle are
    another incident, and sent."""
    time.sleep(WINDOW_S)  # the rate limit's window is empty again
    duplicates = counter(system, "alerts", outcome="duplicate")

    def about(cycle: str) -> Callable[[int], dict[str, str]]:
        return lambda i: {"cycle_id": cycle, "attempt": str(i)}

    def sent(cycle: str) -> list[dict[str, Any]]:
        return [n for n in webhook.received if "the same thing happened" in n["message"] and cycle in n["message"]]

    events_as(system, "risk", ["the same thing happened"] * 3, fields=about("1d-20241201T0000"))
    wait_until(lambda: sent("1d-20241201T0000"), "the alert", 30)
    wait_until(lambda: counter(system, "alerts", outcome="duplicate") >= duplicates + 2, "two duplicates counted", 30)
    assert len(sent("1d-20241201T0000")) == 1
    events_as(system, "risk", ["the same thing happened"], fields=about("1d-20241202T0000"))
    wait_until(lambda: sent("1d-20241202T0000"), "the alert of another cycle", 30)
    assert len(sent("1d-20241201T0000")) == 1 and len(sent("1d-20241202T0000")) == 1


def test_a_burst_is_rate_limited_and_summed_up(system: ConsoleSystem, webhook: Webhook) -> None:
    time.sleep(WINDOW_S)
    start = len(webhook.received)
    burst = 12
    events_as(system, "executor", [f"burst {i}" for i in range(burst)], kind="PRICE_GUARD")
    wait_until(lambda: counter(system, "alerts", outcome="limited") >= burst - LIMIT, "the rate limit", 30)
    held = wait_until(lambda: [n for n in webhook.received[start:] if "held back" in n["title"]],
                      "the held-back summary", timeout=WINDOW_S * 4)
    sent = [n for n in webhook.received[start:] if n["message"].startswith("burst ")]
    assert len(sent) == LIMIT, [n["message"] for n in sent]
    assert held[0]["title"].startswith(f"AURA: {burst - LIMIT} alerts held back")
    assert "PRICE_GUARD" in held[0]["message"]
    # Within the window no more than LIMIT went out.
    first = sent[0]["at"]
    assert len([n for n in webhook.received[start:] if n["at"] - first < WINDOW_S - 0.5]) <= LIMIT


def test_a_service_down_longer_than_the_setting_is_alerted(system: ConsoleSystem, webhook: Webhook) -> None:
    proc = system.stack.procs["optimizer"]
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    alert = wait_until(lambda: webhook.titled("AURA optimizer down"), "the down alert", timeout=60)
    assert len(alert) == 1
    assert alert[0]["at"] - stopped >= DOWN_AFTER_S - 0.5, "alerted before the setting's delay"
    assert "optimizer has been down or not ready" in alert[0]["message"]
    time.sleep(5)
    assert len(webhook.titled("AURA optimizer down")) == 1, "one alert per outage"
    state: dict[str, Any] = httpx.get(f"{system.url}/api/state", timeout=5).json()
    assert state["services"]["optimizer"]["status"] == "down"
    logging.getLogger(__name__).info("alerts received: %s", [n["title"] for n in webhook.received])


def test_a_service_down_again_after_it_came_back_is_alerted_again(system: ConsoleSystem, webhook: Webhook) -> None:
    """Each outage is an incident: the optimizer (stopped by the test above) started again is alerted back, and
    stopped again within the dedup window (600 s here) is alerted down a second time."""
    wait_until(lambda: webhook.titled("AURA optimizer down"), "the first down alert", timeout=60)
    start_service(system.stack, "optimizer")
    wait_until(lambda: webhook.titled("AURA optimizer is ready again"), "the back alert", timeout=120)
    proc = system.stack.procs["optimizer"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    wait_until(lambda: len(webhook.titled("AURA optimizer down")) == 2, "the second outage's alert", timeout=60)
