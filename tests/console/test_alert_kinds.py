"""Every alert kind issue 11 asks for reaches the operator: kill-switch latched or re-armed, a plan refused, a message
dead-lettered, stale data, a price-guard refusal, a sync-guard refusal.

Each case is the log line a service writes for it (tag and level as in the service's code), sent through the real
path: the service's event bridge (shared/events.py: only tags in EVENT_TAGS, at their level, become events), the
event's subject (must be one the console's durable consumes) and the console's alert for it
(services/console/notify.py).  Dropping a tag from EVENT_TAGS, raising its level above the service's line, or
routing events elsewhere fails here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from services.console.notify import alert_for_event
from shared.contracts import CONSUMERS, ServiceEvent, decode
from shared.events import EventBridge
from shared.logging import error, info, warn

Log = Callable[..., None]

# (what the issue names, the service, how it logs, tag, message as the service words it)
ALERTED: list[tuple[str, str, Log, str, str]] = [
    ("kill-switch latched", "risk", warn, "KILL_SWITCH", "rolling drawdown breached; liquidating and latching halt"),
    ("kill-switch re-armed", "risk", warn, "KILL_SWITCH", "re-armed after its cooldown; drawdown measured from here"),
    ("kill-switch reset", "risk", warn, "KILL_SWITCH", "operator reset applied"),
    ("plan refused: stale", "executor", error, "STALE_PLAN", "plan on data too old for the exchange's clock"),
    ("plan refused: forged", "executor", warn, "FORGED_PLAN", "plan signature does not verify; refusing it"),
    ("plan refused: sync guard", "executor", error, "SYNC_GUARD",
     "exchange balances confirmed short of the journal; refusing the plan"),
    ("dead-lettered", "executor", error, "DEAD_LETTER", "stale_basis: basis s-1 != current s-2"),
    ("stale data", "ingest", warn, "DATA_STALE", "incomplete snapshot; cycle aborted"),
    ("price guard", "executor", warn, "PRICE_GUARD", "leg refused: the exchange's price or book does not allow it"),
    ("plan held back: bar count not stored", "risk", error, "BAR_BUDGET",
     "the bar's count could not be stored; the plan is not published"),
    ("bar count forged", "risk", error, "FORGED_STATE", "the participation cap's count of the bar does not verify"),
    ("parameters refused", "signal", error, "PARAMS_REFUSED", "parameter document refused; keeping the last valid"),
    ("parameters for other bars refused", "risk", error, "TIMEFRAME",
     "parameter document refused; keeping the last valid"),
]

# Lines of the same tags that are routine, and would make the alerts noise.
NOT_ALERTED: list[tuple[str, str, Log, str, str]] = [
    ("sync guard: a failed read, retried", "executor", warn, "SYNC_GUARD", "balance read failed"),
    ("sync guard: a shortfall seen once", "executor", warn, "SYNC_GUARD",
     "exchange shows less than the journal; not acting on an unconfirmed read"),
    ("stale data: a bar asked for again", "ingest", info, "DATA_STALE", "stale bar kept; asking for it again"),
    ("the bar's count read at boot", "risk", info, "BAR_BUDGET", "what the decision bar already sent, read at boot"),
    ("the optimizer's defaults scaled to its bars", "optimizer", info, "TIMEFRAME", "lookbacks scaled x24 for 1h"),
]


class RecordingJs:
    """A bus that stores what is published to it."""

    _aura_msg_id_key = b"k" * 32  # what shared.bus.connect gives a context: message ids are hashed under it

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []

    async def publish(self, subject: str, payload: bytes, stream: str = "", **kwargs: Any) -> None:
        self.published.append((subject, payload, stream))


def published_by(service: str, log: Log, tag: str, text: str) -> list[tuple[str, bytes, str]]:
    async def scenario() -> list[tuple[str, bytes, str]]:
        logger = logging.getLogger(f"t.alert_kinds.{service}")
        logger.propagate = False
        js = RecordingJs()
        bridge = EventBridge(js, service, logger)  # type: ignore[arg-type]
        logger.addHandler(bridge)
        try:
            log(logger, tag, text, cycle_id="c-1")
            await asyncio.sleep(0)
            await bridge.drain()
        finally:
            logger.removeHandler(bridge)
        return js.published

    return asyncio.run(scenario())


def console_consumes(subject: str) -> bool:
    spec = CONSUMERS["console"]
    prefix = spec.filter_subject.removesuffix(">")
    return subject == spec.filter_subject or (spec.filter_subject.endswith(">") and subject.startswith(prefix))


@pytest.mark.parametrize(("what", "service", "log", "tag", "text"), ALERTED, ids=[case[0] for case in ALERTED])
def test_each_alert_kind_of_the_issue_reaches_the_console_as_an_alert(what: str, service: str, log: Log, tag: str,
                                                                     text: str) -> None:
    published = published_by(service, log, tag, text)
    assert len(published) == 1, f"{what}: [{tag}] is no event (missing from EVENT_TAGS, or its level too high)"
    subject, payload, stream = published[0]
    assert console_consumes(subject) and stream == CONSUMERS["console"].stream, (what, subject, stream)
    event = decode(payload, ServiceEvent)
    assert (event.service, event.kind) == (service, tag)
    alert = alert_for_event(event)
    assert alert.title == f"AURA {service}: {tag}" and alert.body.startswith(text), alert
    assert alert.severity == ("error" if log is error else "warning")


@pytest.mark.parametrize(("what", "service", "log", "tag", "text"), NOT_ALERTED, ids=[case[0] for case in NOT_ALERTED])
def test_routine_lines_of_the_same_tags_are_not_alerted(what: str, service: str, log: Log, tag: str,
                                                        text: str) -> None:
    assert published_by(service, log, tag, text) == [], what


# How each alerted line starts in the code that writes it (the test's texts above are abridged): its level and tag
# are read there, so a service that lowered an alerted line's level (SYNC_GUARD's refusal to a warning, say) would
# no longer be alerted, and fails here.
WRITTEN_AS = {
    "kill-switch latched": ("services/risk", '"rolling drawdown breached'),
    "kill-switch re-armed": ("services/risk", '"re-armed after its cooldown'),
    "kill-switch reset": ("services/risk", '"operator reset applied'),
    "plan refused: stale": ("services/executor", '"plan on data too old'),
    "plan refused: forged": ("services/executor", '"plan signature does not verify'),
    "plan refused: sync guard": ("services/executor", '"exchange balances confirmed short'),
    "dead-lettered": ("shared", 'f"{reason}: '),
    "stale data": ("services/ingest", 'f"{reason}; cycle aborted"'),
    "price guard": ("services/executor", '"leg refused: the exchange'),
    "plan held back: bar count not stored": ("services/risk", '"the bar\'s count could not be stored'),
    "bar count forged": ("services/risk", '"the participation cap\'s count of the bar does not verify'),
    "parameters refused": ("shared", '"parameter document refused'),
    "parameters for other bars refused": ("shared", '"parameter document refused'),
}


@pytest.mark.parametrize(("what", "service", "log", "tag", "text"), ALERTED, ids=[case[0] for case in ALERTED])
def test_each_alerted_line_is_written_at_that_level_by_the_code(what: str, service: str, log: Log, tag: str,
                                                                text: str) -> None:
    from tests.conftest import REPO_ROOT

    folder, start = WRITTEN_AS[what]
    call = re.compile(rf"\b{log.__name__}\(\s*[\w.]+,\s*\"{tag}\",\s*{re.escape(start)}")
    sources = sorted((REPO_ROOT / folder).rglob("*.py"))
    assert any(call.search(path.read_text()) for path in sources), f"{what}: no {log.__name__}(..., {tag!r}, {start}"
