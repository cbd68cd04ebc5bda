"""Deduplication keeps out repeats of one incident, never a second incident; alert text reads well on a phone.

The events are made the way a service makes them (its tagged log line through ``shared.events.event_from``), with
the fields the service's code gives that line, and offered to the console's notifier as ``on_event`` does.  An
incident said twice (the same event redelivered, the same line logged again) is one alert; a kill-switch that
latches again after a reset, a second reset, a service down again after it came back, and each of a flood of
distinct dead letters are incidents of their own: the flood is bounded by the rate limit and summed up, not
swallowed as "duplicates".
"""

from __future__ import annotations

import logging
from typing import Any

from services.console.notify import Alert, DownTracker, Notifier, alert_for_event
from shared.contracts import ServiceEvent
from shared.events import event_from
from shared.health import HealthState

BAR = 1_550_966_400_000  # 2019-02-24 00:00 UTC
DAY = 86_400_000
LATCHED = "rolling drawdown breached; liquidating and latching halt"
RESET = "operator reset applied; drawdown is measured from the equity at the reset on"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def notifier(clock: Clock, limit: int = 20, window: float = 600.0, dedup: float = 600.0) -> Notifier:
    return Notifier(["json://127.0.0.1:9/x"], dedup, limit, window, HealthState(service="console"),
                    logging.getLogger("t.identity"), clock)


def said(service: str, tag: str, text: str, at_s: float, level: int = logging.WARNING, **fields: Any) -> ServiceEvent:
    """The event ``service``'s bridge makes of its log line ``text`` logged at ``at_s`` (epoch seconds)."""
    logger = logging.getLogger(f"t.identity.{service}")
    record = logger.makeRecord(logger.name, level, __file__, 0, text, (), None,
                               extra={"tag": tag, "fields": fields})
    record.created = at_s
    return event_from(record, service)


def latched(cycle: int, at_s: float) -> ServiceEvent:
    """risk's line when the switch latches (services/risk/service.py ``latch``) at the bar of day ``cycle``."""
    return said("risk", "KILL_SWITCH", LATCHED, at_s, cycle_id=f"1d-201902{24 + cycle}T0000", drawdown=0.1288,
                latched_at_ms=BAR + cycle * DAY, rearm_at_ms=0)


def test_a_kill_switch_latching_again_after_a_reset_is_alerted_and_a_repeat_is_not() -> None:
    clock = Clock()
    n = notifier(clock)
    first = latched(0, 1_700_000_000.0)
    assert n.offer(alert_for_event(first)) == "queued"
    assert n.offer(alert_for_event(first)) == "duplicate", "the same event redelivered"
    assert n.offer(alert_for_event(latched(0, 1_700_000_007.0))) == "duplicate", "the same latch said again"
    clock.now += 60
    reset = said("risk", "KILL_SWITCH", RESET, 1_700_000_060.0, was_latched=True, reset_by="operator:ops",
                 reason="checked", reset_at_ms=1_700_000_059_000)
    assert n.offer(alert_for_event(reset)) == "queued"
    clock.now += 60
    assert n.offer(alert_for_event(latched(1, 1_700_000_120.0))) == "queued", "a second latch, another cycle"
    second_reset = said("risk", "KILL_SWITCH", RESET, 1_700_000_180.0, was_latched=True, reset_by="operator:ops",
                        reason="checked", reset_at_ms=1_700_000_179_000)
    assert n.offer(alert_for_event(second_reset)) == "queued", "a second reset"
    assert n.queue.qsize() == 4


def test_a_service_down_again_after_it_came_back_is_alerted_again() -> None:
    clock = Clock()
    n, tracker = notifier(clock), DownTracker(10, clock)
    outcomes = []
    for ready, wait in ((False, 0), (False, 11), (True, 5), (False, 5), (False, 11), (False, 30), (True, 5)):
        clock.now += wait
        alert = tracker.update("risk", ready, "down: no answer")
        if alert is not None:
            outcomes.append((alert.title, n.offer(alert)))
    assert outcomes == [("AURA risk down", "queued"), ("AURA risk is ready again", "queued"),
                        ("AURA risk down", "queued"), ("AURA risk is ready again", "queued")]


def test_a_flood_of_distinct_dead_letters_is_limited_and_summed_up_not_swallowed() -> None:
    """30 malformed plans refused one after the other: each is an incident (the dead-letter line names each by
    its payload's sha256, as shared.bus.dead_letter logs it), so the rate limit, not deduplication, bounds them:
    ``limit`` alerts, then one digest counting the rest.  A redelivery of one already counted is counted once."""
    clock = Clock()
    n = notifier(clock, limit=20, window=600)
    floods = [said("signal", "DEAD_LETTER", "malformed: Object missing required field `as_of_ms`",
                   1_700_000_000.0 + i * 0.25, logging.ERROR, subject="aura.data.ready", bytes=29,
                   sha256=f"{i:064x}") for i in range(30)]
    outcomes = [n.offer(alert_for_event(event)) for event in floods]
    assert outcomes == ["queued"] * 20 + ["limited"] * 10
    assert n.offer(alert_for_event(floods[3])) == "duplicate", "a redelivery of one sent"
    assert n.offer(alert_for_event(floods[25])) == "duplicate", "a redelivery of one held back: counted once"
    clock.now += 601
    n.release_held_back()
    sent = [n.queue.get_nowait() for _ in range(n.queue.qsize())]
    assert len(sent) == 21
    assert sent[-1].title == "AURA: 10 alerts held back by the rate limit"
    assert sent[-1].body == "10 x AURA signal: DEAD_LETTER"


def test_an_event_without_identifying_fields_is_one_incident_per_line_and_window() -> None:
    """Nothing in it names the incident: the same line said again within the dedup window is a duplicate (an
    ingest poll failing every minute once made an alert a minute), said after it is news again, and another line
    is another incident."""
    clock = Clock()
    n = notifier(clock)
    lines = [said("ingest", "INGEST_ERROR", "poll failed; retrying at the next poll", 1_700_000_000.0 + 60 * k,
                  logging.ERROR, error="TimeoutError") for k in range(5)]
    assert [n.offer(alert_for_event(e)) for e in lines] == ["queued"] + ["duplicate"] * 4
    other = said("ingest", "INGEST_ERROR", "the cache is not writable", 1_700_000_300.0, logging.ERROR)
    assert n.offer(alert_for_event(other)) == "queued"
    # The same words about other things (which pairs, which subject) are other incidents.
    delisted = [said("ingest", "DELISTED", "1 pairs of AURA_SYMBOLS are not trading", 1_700_000_400.0,
                     logging.WARNING, symbols=s) for s in ("LUNA/USDT", "FTT/USDT", "LUNA/USDT")]
    assert [n.offer(alert_for_event(e)) for e in delisted] == ["queued", "queued", "duplicate"]
    clock.now += 700  # past AURA_NOTIFY_DEDUP_S
    assert n.offer(alert_for_event(lines[0])) == "queued"


def test_alert_text_shows_times_in_utc_and_no_raw_epoch_milliseconds() -> None:
    alert = alert_for_event(latched(0, 1_700_000_000.0))
    assert isinstance(alert, Alert) and alert.title == "AURA risk: KILL_SWITCH"
    assert "latched_at=2019-02-24T00:00Z" in alert.body, alert.body
    assert "rearm_at=none" in alert.body, alert.body
    assert "1550966400000" not in alert.body and "_ms=" not in alert.body, alert.body
    assert "cycle_id=1d-20190224T0000" in alert.body and "drawdown=0.1288" in alert.body
    reset = alert_for_event(said("risk", "KILL_SWITCH", RESET, 1_700_000_060.0, reset_at_ms=1_700_000_059_250))
    assert "reset_at=2023-11-14T22:14:19Z" in reset.body, reset.body
    # A millisecond count that is no time of day (a duration) is left as it is.
    timeout = alert_for_event(said("executor", "REJECT", "order rejected", 1_700_000_000.0, timeout_ms=1500))
    assert "timeout_ms=1500" in timeout.body, timeout.body
