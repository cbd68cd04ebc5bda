"""Service events: the tagged log lines an operator should hear about, published on ``aura.events.<service>``.

Services already log what matters with permanent tags (``[KILL_SWITCH]``, ``[DEAD_LETTER]``, ``[DATA_STALE]``,
...).  Rather than a second call beside each of those lines, which the next new log line would forget, one
logging handler on the service's logger (:class:`EventBridge`, installed by ``shared.service``) turns every record
whose tag is in :data:`EVENT_TAGS`, at or above that tag's level, into a :class:`ServiceEvent`.  The console
consumes the events and sends the alerts (services/console/notify.py), so no service ever talks to Telegram.

An event must never get in the way of trading:

* ``emit`` only schedules the publish on the service's event loop and returns (from another thread it hands the
  event over with ``call_soon_threadsafe``); nothing in the caller's path waits for the bus;
* the publish is fire and forget: a failure is logged (tag ``EVENTS``, itself not an event tag, so no loop),
  counted and dropped, never raised;
* at most :data:`MAX_IN_FLIGHT` publishes wait at once, so a bus that is down costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext

from shared.bus import publish
from shared.contracts import EVENT_FIELD_MAX, EVENT_FIELDS_MAX, EVENT_TEXT_MAX, ServiceEvent, content_id
from shared.health import HealthState
from shared.logging import redact, warn

# Tag -> the lowest level that makes it an event.  INFO where the good news matters too (the kill-switch
# re-armed, the books agreeing again); WARNING where INFO lines are routine (a stale bar asked for again).
EVENT_TAGS: dict[str, int] = {
    "KILL_SWITCH": logging.INFO,  # latched by drawdown; re-armed after its cooldown or by `aura risk reset`
    "DEAD_LETTER": logging.WARNING,  # any refused message: a plan the executor refused, a forged target, ...
    "DATA_STALE": logging.WARNING,  # a cycle announced stale and aborted
    "DECISION_GAP": logging.WARNING,  # a pair the exchange has no decision-bar candle for (held: the bar waits)
    "INGEST_ERROR": logging.ERROR,  # an ingest poll that raised (bus, disk): retried, red once it persists
    "PRICE_GUARD": logging.WARNING,  # a leg refused: its price or book is not fit to trade on
    "RECONCILE": logging.INFO,  # trading halted on a book mismatch, an adoption, the books agreeing again
    "STALE_PLAN": logging.WARNING,  # a plan on data too old for the exchange's clock
    # A plan refused on confirmed short balances.  ERROR only: the guard's WARNING lines (a failed read, a
    # shortfall seen once) are the transient reads it exists to sit out, and would page someone on every 5xx.
    "SYNC_GUARD": logging.ERROR,
    "FORGED_PLAN": logging.WARNING,
    "FORGED_TARGET": logging.WARNING,
    "FORGED_SNAPSHOT": logging.WARNING,
    "FORGED_STATE": logging.WARNING,
    # A plan held back because the bar's participation count could not be stored (risk's exits too, while it
    # lasts).  ERROR only: the INFO line at boot says what the count was.
    "BAR_BUDGET": logging.ERROR,
    "PARAMS_REFUSED": logging.WARNING,
    # A parameter version made for other bars, refused.  ERROR only: the optimizer's INFO line saying how it
    # scaled the defaults to its timeframe is routine.
    "TIMEFRAME": logging.ERROR,
    "JOURNAL_FAULT": logging.WARNING,
    "EXCHANGE_DOWN": logging.INFO,  # the exchange not answering (plans wait), and when it answers again
    "MARKETS": logging.WARNING,  # the executor's market rules could not be reloaded
    "MARKETS_STALE": logging.WARNING,
    "DELISTED": logging.WARNING,
    "REJECT": logging.WARNING,  # an order the exchange rejected
    "MISROUTED": logging.WARNING,  # stored messages pushed onto a service's subscription by another principal
}
MAX_IN_FLIGHT = 64


def severity_of(levelno: int) -> str:
    return "error" if levelno >= logging.ERROR else "warning" if levelno >= logging.WARNING else "info"


def event_from(record: logging.LogRecord, service: str) -> ServiceEvent:
    """The event a tagged log record stands for: secrets masked as in the log line, every part bounded."""
    fields = getattr(record, "fields", None) or {}
    bounded = {str(k)[:64]: str(redact(v, str(k)))[:EVENT_FIELD_MAX]
               for k, v in list(fields.items())[:EVENT_FIELDS_MAX]}
    body = {"service": service, "kind": str(getattr(record, "tag", "")), "severity": severity_of(record.levelno),
            "text": str(redact(record.getMessage()))[:EVENT_TEXT_MAX], "at_ms": int(record.created * 1000),
            "fields": bounded}
    return ServiceEvent(event_id=content_id(body, prefix="e-"), **body)


class EventBridge(logging.Handler):
    """Publishes an event for each tagged record it sees, without ever blocking or raising into the logger."""

    def __init__(self, js: JetStreamContext, service: str, logger: logging.Logger,
                 health: HealthState | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.js, self.service, self.logger, self.health = js, service, logger, health
        self.loop = asyncio.get_running_loop()
        self.in_flight: set[asyncio.Task[None]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        tag = getattr(record, "tag", None)
        level = EVENT_TAGS.get(tag) if isinstance(tag, str) else None
        if level is None or record.levelno < level:
            return
        try:
            event = event_from(record, self.service)
            try:
                on_loop = asyncio.get_running_loop() is self.loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                self._schedule(event)
            else:  # a log line from a worker thread: hand the event to the loop
                self.loop.call_soon_threadsafe(self._schedule, event)
        except Exception:  # a closed loop, an unprintable field: the log line itself must still go out
            self._count("events_dropped")

    def _schedule(self, event: ServiceEvent) -> None:
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            self._count("events_dropped")
            return
        task = self.loop.create_task(self._publish(event), name=f"event-{event.kind}")
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _publish(self, event: ServiceEvent) -> None:
        try:
            await publish(self.js, event, msg_id=event.event_id)
        except Exception as exc:
            self._count("events_dropped")
            warn(self.logger, "EVENTS", "event not published; dropped (the log line above stands)", kind=event.kind,
                 error=f"{type(exc).__name__}: {exc}"[:200])
            return
        if self.health is not None:
            self.health.inc("events_published", kind=event.kind)

    def _count(self, name: str) -> None:
        if self.health is not None:
            with contextlib.suppress(Exception):
                self.health.inc(name)

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Give publishes already scheduled a moment to finish (a clean stop), then cancel the rest."""
        pending = set(self.in_flight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()


def install_event_bridge(logger: logging.Logger, js: JetStreamContext, service: str,
                         health: HealthState | None = None) -> EventBridge:
    bridge = EventBridge(js, service, logger, health)
    logger.addHandler(bridge)
    return bridge
