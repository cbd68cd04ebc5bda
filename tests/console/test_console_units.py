"""The console's and the event bridge's logic without a bus: deduplication, the rate limit, down tracking, the
daily summary, the chart's times and benchmarks, and an event publish that can never hurt its caller."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from services.console.chart import PriceSeries, daily_benchmark_series, drawdown, point_times_ms, relative
from services.console.notify import Alert, DownTracker, Notifier, daily_summary, summary_due
from services.console.view import DayCounts, open_orders
from shared.contracts import EVENT_FIELD_MAX, EVENT_TEXT_MAX, ServiceEvent, stream_of, subject_of
from shared.events import MAX_IN_FLIGHT, EventBridge, event_from
from shared.health import HealthState
from shared.logging import error, info, register_secret, warn

DAY = 86_400_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def notifier(urls: list[str], clock: Clock, limit: int = 3, window: float = 60.0, dedup: float = 300.0) -> Notifier:
    return Notifier(urls, dedup, limit, window, HealthState(service="console"), logging.getLogger("t"), clock)


def test_the_same_alert_is_sent_once_within_the_dedup_window() -> None:
    clock = Clock()
    n = notifier(["json://127.0.0.1:9/x"], clock)
    alert = Alert("k", "title", "body")
    assert [n.offer(alert) for _ in range(3)] == ["queued", "duplicate", "duplicate"]
    clock.now += 301
    assert n.offer(alert) == "queued"
    assert n.health.counters["alerts"] == 2


def test_a_burst_is_limited_then_summed_up_once_the_window_has_room() -> None:
    clock = Clock()
    n = notifier(["json://127.0.0.1:9/x"], clock, limit=3, window=60)
    outcomes = [n.offer(Alert(f"k{i}", "AURA risk: KILL_SWITCH", f"b{i}")) for i in range(8)]
    assert outcomes == ["queued"] * 3 + ["limited"] * 5
    n.release_held_back()
    assert n.queue.qsize() == 3, "no room yet: nothing summed up"
    clock.now += 61
    n.release_held_back()
    assert n.queue.qsize() == 4
    queued = [n.queue.get_nowait() for _ in range(4)]
    assert queued[-1].title == "AURA: 5 alerts held back by the rate limit"
    assert queued[-1].body == "5 x AURA risk: KILL_SWITCH"


def test_the_daily_summary_is_never_held_back_by_the_rate_limit() -> None:
    """After a burst the limit holds events back, but the summary comes by the clock, once a day: it goes out
    whole, and once (a second offer of the same day is a duplicate)."""
    clock = Clock()
    n = notifier(["json://127.0.0.1:9/x"], clock, limit=3, window=60)
    burst = [n.offer(Alert(f"k{i}", "AURA executor: PRICE_GUARD", "b")) for i in range(4)]
    assert burst == ["queued"] * 3 + ["limited"]
    summary = Alert("summary:2026-12-06", "AURA daily summary 2026-12-06", "equity 10,000 USDT", "info")
    assert n.offer(summary, scheduled=True) == "queued"
    assert n.offer(summary, scheduled=True) == "duplicate"
    assert n.offer(Alert("k9", "AURA executor: PRICE_GUARD", "b")) == "limited", "the summary opened the limit"
    assert [n.queue.get_nowait().title for _ in range(4)][-1] == "AURA daily summary 2026-12-06"


def test_without_a_url_nothing_is_queued_and_a_bad_url_is_ignored_without_showing_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    n = notifier(["nonsense://secret-token-123/chat"], Clock())
    assert n.targets == 0 and n.offer(Alert("k", "t", "b")) == "off" and n.queue.empty()
    assert "secret-token-123" not in caplog.text and "nonsense" in caplog.text


def test_a_telegram_url_is_a_secret_the_logs_never_show() -> None:
    url = "tgram://123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQrr/4242"
    n = notifier([url], Clock())
    assert n.targets == 1
    from shared.logging import redact

    assert url not in redact(f"sending to {url}")


def test_sending_runs_in_a_thread_and_counts_the_outcome() -> None:
    n = notifier(["json://127.0.0.1:9/x"], Clock())
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def notify(**kwargs: Any) -> bool:
        seen["thread"] = threading.get_ident()
        return True

    n.apprise.notify = notify  # type: ignore[method-assign]
    assert asyncio.run(n.send(Alert("k", "t", "b"))) is True
    assert seen["thread"] != loop_thread
    assert n.health.counters["alerts"] == 1


def test_a_service_is_alerted_once_after_the_delay_and_again_when_back() -> None:
    clock = Clock()
    tracker = DownTracker(10, clock)
    assert tracker.update("risk", False, "down") is None
    clock.now += 9
    assert tracker.update("risk", False, "down") is None
    clock.now += 2
    alert = tracker.update("risk", False, "down: no answer")
    # Keyed by the outage (when it began, 1000.0 here): a later outage is another incident.
    assert alert is not None and alert.key == "down:risk:1000.0" and alert.severity == "error" and "11 s" in alert.body
    clock.now += 30
    assert tracker.update("risk", False, "down") is None, "one alert per outage"
    back = tracker.update("risk", True, "ready")
    assert back is not None and back.key == "up:risk:1000.0"
    assert tracker.update("risk", True, "ready") is None
    assert tracker.update("ingest", True, "ready") is None, "a service that was never down is not news"


def test_the_daily_summary_is_due_once_a_day_from_its_hour() -> None:
    noon = 1_733_400_000.0  # 2024-12-05 12:00 UTC
    assert summary_due(noon, 8, "") == "2024-12-05"
    assert summary_due(noon, 8, "2024-12-05") == ""
    assert summary_due(noon, 13, "") == ""
    assert summary_due(noon, -1, "") == ""
    noon_ms = int(noon * 1000)
    state = {"portfolio": {"equity": 1100.0, "drawdown": -0.05, "exposure": 0.5,
                           "positions": [{"symbol": "BTC/USDT", "qty": 0.01, "pnl": 12.5}]},
             "chart": {"commit_ms": [noon_ms - DAY - 60_000, noon_ms - 3_600_000],
                       "equity": [{"time": 0, "value": 1000.0}, {"time": 1, "value": 1100.0}]},
             "latch": {"halted": True}, "params": {"version": 3},
             "last_24h": {"events": {"DEAD_LETTER": 1}, "cycles": {"executed": 2, "rejected": 1}}}
    alert = daily_summary("2024-12-05", state, {"risk": {"ready": False}, "ingest": {"ready": True}}, noon)
    assert alert.key == "summary:2024-12-05"
    for part in ("equity 1,100.00 USDT", "P&L +100.00 USDT (+10.00%) in 24 h", "drawdown -5.0%",
                 "BTC/USDT 0.01 (P&L +12.50 USDT)", "cycles in 24 h: 3 (executed 2, rejected 1)",
                 "kill-switch LATCHED", "parameters version 3", "services not ready: risk", "DEAD_LETTER x1"):
        assert part in alert.body, part


def test_a_summary_of_a_system_started_today_says_since_when_and_what_it_does_not_know() -> None:
    noon = 1_733_400_000.0  # 2024-12-05 12:00 UTC
    started = int(noon * 1000) - 3 * 3_600_000  # 09:00
    state = {"portfolio": {"equity": 950.0, "positions": []},
             "chart": {"commit_ms": [started, started + 60_000],
                       "equity": [{"time": 0, "value": 1000.0}, {"time": 1, "value": 950.0}]}}
    body = daily_summary("2024-12-05", state, {}, noon).body
    for part in ("P&L -50.00 USDT (-5.00%) since 2024-12-05 09:00 UTC", "positions: none", "cycles in 24 h: 0",
                 "services not polled yet", "events in 24 h: none"):
        assert part in body, part
    assert "no portfolio snapshot read from the bus" in daily_summary("2024-12-05", {}, {}, noon).body


def test_the_day_counts_hold_a_busy_day_whole_and_forget_what_is_older() -> None:
    """The page keeps the newest rows only; the summary's counts keep every one of the last 24 h (by the minute),
    count a message the bus holds twice once, and drop what is older than a day."""
    counts = DayCounts()
    start = 1_733_356_800_000  # 2024-12-05 00:00 UTC
    for i in range(3000):  # one every ~29 s all day long, more than the page's lists ever hold
        counts.add(f"e-{i}", start + i * 28_800, "PRICE_GUARD" if i % 3 else "DEAD_LETTER")
    counts.add("e-7", start + 7 * 28_800, "PRICE_GUARD")  # said again: same id
    counts.add("old", start - DAY - 120_000, "RECONCILE")
    end = start + DAY - 1
    assert counts.totals(end) == {"PRICE_GUARD": 2000, "DEAD_LETTER": 1000}
    assert len(counts.minutes) <= 1441 and "old" not in counts.seen
    # Half a day later the first half has left the window (its start is a whole minute: no event straddles it).
    assert counts.totals(start + DAY + 12 * 3_600_000) == {"PRICE_GUARD": 1000, "DEAD_LETTER": 500}


def test_equity_points_sit_at_their_bars_close_and_always_increase() -> None:
    bar0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC
    cycles = {1: "genesis", 2: "1d-20231115T0000", 3: "tick-abc", 4: "1d-20231116T0000"}
    times = point_times_ms([1, 2, 3, 4], cycles, DAY)
    assert times == [bar0, bar0 + DAY, bar0 + DAY + 1000, bar0 + 2 * DAY]
    # Unknown commits (not on the bus any more) never go backwards.
    assert point_times_ms([5_000, 6_000, 7_000], {}, DAY) == [5_000, 6_000, 7_000]
    assert point_times_ms([7_000, 6_500], {}, DAY) == [7_000, 8_000]


def test_benchmarks_start_with_the_equity_and_never_use_a_later_close() -> None:
    spy = daily_benchmark_series([0, DAY, 2 * DAY], [100.0, 110.0, 121.0])  # known at 21:00 UTC each day
    times = [DAY, DAY + 20 * 3_600_000, 2 * DAY]
    points = relative(spy, times, 1000.0)
    # At day 1 00:00 only day 0's close is known; day 1's close is known from 21:00.
    assert [p["value"] for p in points] == [1000.0, 1000.0, 1100.0]
    assert relative(PriceSeries([5 * DAY], [1.0]), times, 1000.0) == []
    assert drawdown([100, 120, 90, 130]) == [0.0, 0.0, pytest.approx(-0.25), 0.0]


def test_open_orders_are_unknown_where_the_journal_is_not_visible(tmp_path: Path) -> None:
    orders = open_orders(tmp_path / "executor" / "journal.sqlite")
    assert orders["known"] is False and orders["rows"] == [] and "journal" in orders["why"]


# --- events ---------------------------------------------------------------------------------------------------


def record(logger: logging.Logger, tag: str, msg: str, level: int = logging.WARNING, **fields: Any) -> Any:
    return logger.makeRecord(logger.name, level, __file__, 0, msg, (), None, extra={"tag": tag, "fields": fields})


def test_an_event_is_bounded_and_masks_secrets_like_the_log_line() -> None:
    register_secret("hunter2-secret-value")
    logger = logging.getLogger("t.bounds")
    rec = record(logger, "KILL_SWITCH", "x" * 5000 + " hunter2-secret-value", logging.ERROR, api_key="k",
                 **{f"f{i}": "y" * 1000 for i in range(40)})
    event = event_from(rec, "risk")
    assert isinstance(event, ServiceEvent) and event.severity == "error" and event.kind == "KILL_SWITCH"
    assert len(event.text) <= EVENT_TEXT_MAX and "hunter2-secret-value" not in event.text
    assert len(event.fields) <= 16 and all(len(v) <= EVENT_FIELD_MAX for v in event.fields.values())
    assert event.fields["api_key"] == "***REDACTED***"
    assert subject_of(event) == "aura.events.risk" and stream_of(subject_of(event)) == "AURA_EVENTS"


class FailingJs:
    """A bus that refuses every publish (the server down, a permission error)."""

    _aura_msg_id_key = b"k" * 32  # what shared.bus.connect gives a context: message ids are hashed under it

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        raise ConnectionError("nats: no servers available")


def test_an_event_publish_never_raises_into_the_caller_and_never_waits() -> None:
    async def scenario() -> tuple[int, float, int]:
        logger = logging.getLogger("t.bridge")
        logger.propagate = False
        health = HealthState(service="executor")
        js = FailingJs()
        bridge = EventBridge(js, "executor", logger, health)  # type: ignore[arg-type]
        logger.addHandler(bridge)
        try:
            warn(logger, "PRICE_GUARD", "leg refused")  # returns at once, the publish happens later
            info(logger, "PRICE_GUARD", "an INFO line of a WARNING tag is no event")
            error(logger, "BOOT", "an untagged-for-events line is no event")
            worker = threading.Thread(target=lambda: error(logger, "RECONCILE", "from a worker thread"))
            worker.start()
            # Its line has been handed to the loop once the thread is done (a fixed sleep raced a slow thread);
            # the loop then schedules the publish, which drain() waits for.
            await asyncio.to_thread(worker.join)
            await asyncio.sleep(0.2)
            await bridge.drain()
        finally:
            logger.removeHandler(bridge)
        return js.calls, health.counters.get("events_dropped", 0), len(bridge.in_flight)

    calls, dropped, in_flight = asyncio.run(scenario())
    assert (calls, dropped, in_flight) == (2, 2, 0)


def test_events_in_flight_are_bounded_while_the_bus_hangs() -> None:
    async def scenario() -> tuple[int, float]:
        logger = logging.getLogger("t.bound")
        logger.propagate = False
        health = HealthState(service="risk")
        gate = asyncio.Event()
        bridge = EventBridge(FailingJs(gate), "risk", logger, health)  # type: ignore[arg-type]
        logger.addHandler(bridge)
        try:
            for i in range(MAX_IN_FLIGHT + 10):
                warn(logger, "DATA_STALE", f"stale {i}")
            await asyncio.sleep(0.05)
            waiting = len(bridge.in_flight)
            gate.set()
            await bridge.drain()
        finally:
            logger.removeHandler(bridge)
        return waiting, health.counters.get("events_dropped", 0)

    waiting, dropped = asyncio.run(scenario())
    assert waiting == MAX_IN_FLIGHT
    assert dropped == MAX_IN_FLIGHT + 10  # 10 refused at once, the rest failed at the bus


def test_the_console_reads_the_trading_streams_and_nothing_it_could_write() -> None:
    from shared.bus_access import CONSOLE_STREAMS, IMPORTED_JS_API, MANAGE, MATRIX, PUBLISH, WRITE, permissions
    from shared.contracts import STREAMS

    assert set(CONSOLE_STREAMS) <= {spec.name for spec in STREAMS}
    assert not [row.label for row in MATRIX if {PUBLISH, WRITE, MANAGE} & set(row.grants.get("console", ()))]
    allowed = permissions("console").publish  # in the console's own account: JetStream's API under its import
    reads = tuple(f"{IMPORTED_JS_API}.{api}" for api in ("DIRECT.GET.", "STREAM.INFO.", "CONSUMER.MSG.NEXT.",
                                                          "CONSUMER.INFO."))
    assert not [p for p in allowed if not p.startswith((*reads, "$JS.ACK."))], allowed


def test_a_peer_is_believed_only_when_its_answer_names_the_service_of_this_run() -> None:
    """Under `aura up` every process carries the run's id (shared/health.py): the console takes a stranger on a
    peer's port (another system's service, whatever took a dead service's port) for down, never for ready.
    Without a run id (compose) there is nothing to compare, and the answer stands as it is."""
    import httpx

    from aura.natsd import free_port
    from services.console.service import Console
    from shared.health import start_health_server, stop_health_server
    from tests.fake_occupant import FakeOccupant

    async def scenario() -> list[tuple[bool, str, str]]:
        port = free_port()
        ours = await start_health_server(HealthState(service="risk", bus_connected=True, run_id="r1"), "127.0.0.1",
                                         port)
        stranger = FakeOccupant(free_port(), "risk")
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                body = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
                assert body["run_id"] == "r1" and body["service"] == "risk" and isinstance(body["pid"], int)
                here, there = f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{stranger.port}/readyz"
                return [await Console._ready(client, here, "risk", "r1"),
                        await Console._ready(client, here, "signal", "r1"),
                        await Console._ready(client, there, "risk", "r1"),
                        await Console._ready(client, there, "risk", "")]
        finally:
            stranger.close()
            await stop_health_server(ours)

    ours, misnamed, stranger, unchecked = asyncio.run(scenario())
    assert ours[:2] == (True, "ready")
    assert misnamed[:2] == (False, "down") and "another process (service 'risk'" in misnamed[2]
    assert stranger[:2] == (False, "down") and "run 'someone-else'" in stranger[2]
    assert unchecked[:2] == (True, "ready")
