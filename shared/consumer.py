"""Consume contracts from a durable pull subscription with one error policy for every service.

- malformed / wrong-version message: dead-lettered with the reason, terminated (never redelivered)
- :class:`Reject` raised by the handler (bad data, bad signature...): dead-lettered, terminated
- any other exception: logged and redelivered after a delay; after ``MAX_DELIVERIES`` it is dead-lettered,
  so a poison message can neither crash the service nor loop forever, and nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.bus import DEAD_LETTER_RETRY_S, dead_letter, settle_refused
from shared.contracts import Contract, ContractError, decode
from shared.health import HealthState
from shared.logging import error, warn
from shared.service import ServiceContext

MAX_DELIVERIES = 5
# A failed handling comes back after RETRY_STEP_S x its delivery count, at most RETRY_MAX_S: the causes worth
# retrying (a store or a peer not answering) clear in seconds, and a poison message is settled in ~20 s.
RETRY_STEP_S, RETRY_MAX_S = 2.0, 10.0
C = TypeVar("C", bound=Contract)


class Reject(Exception):
    """The message is well-formed but must not be processed; ``reason`` is a short machine tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def handle(ctx: ServiceContext, msg: Msg, kind: type[C], handler: Callable[[C], Awaitable[None]]) -> None:
    try:
        obj = decode(msg.data, kind)
    except ContractError as exc:
        ctx.health.inc("dead_letters", reason="malformed")
        await settle_refused(msg, await dead_letter(ctx.js, ctx.logger, ctx.name, msg.subject, "malformed", str(exc),
                                                    msg.data), ctx.logger)
        return
    try:
        await handler(obj)
    except Reject as exc:
        ctx.health.inc("dead_letters", reason=exc.reason)
        await settle_refused(msg, await dead_letter(ctx.js, ctx.logger, ctx.name, msg.subject, exc.reason, str(exc),
                                                    msg.data), ctx.logger)
        return
    except Exception as exc:
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        ctx.health.inc("handler_errors")
        if deliveries >= MAX_DELIVERIES:
            ctx.health.inc("dead_letters", reason="handler_failed")
            await settle_refused(msg, await dead_letter(
                ctx.js, ctx.logger, ctx.name, msg.subject, "handler_failed",
                f"{type(exc).__name__}: {exc} (after {deliveries} deliveries)", msg.data), ctx.logger)
        else:
            error(ctx.logger, "HANDLER_ERROR", "processing failed; will retry", subject=msg.subject,
                  delivery=deliveries, error=f"{type(exc).__name__}: {exc}")
            await msg.nak(delay=min(RETRY_STEP_S * deliveries, RETRY_MAX_S))
        return
    await msg.ack()


# A message delivered more often than this turns the consumer's /readyz red (see pull_loop).  Below every limit
# that settles a failing message for good (consumer.MAX_DELIVERIES = 5 dead-letters it, DEAD_LETTER_MAX_TRIES
# terminates one whose letter cannot be stored), so the seconds it is stuck show before it is given up on; a
# second delivery is routine (a restart, an ack lost), a fourth is not.
REDELIVERY_ALARM = 3

# A fetch that keeps failing (the consumer gone, the bus refusing) for this long turns the consumer's /readyz
# red: a reconnect takes a second or two, and a consumer that cannot be read is a service that does nothing.
FETCH_FAILING_RED_S = 5.0


class RedeliveryAlarm:
    """The consumer's /readyz check: red while one message keeps coming back unsettled, or while fetching from the
    consumer fails (a deleted consumer was once "consuming" for ever: the loop only logged and retried)."""

    def __init__(self, health: HealthState, name: str) -> None:
        self.health, self.name = health, name
        self.stuck: tuple[int, int] | None = None  # (stream seq, deliveries)
        self.failing: tuple[float, str] | None = None  # (monotonic time of the first failed fetch, its error)
        health.checks[f"consumer_{name}"] = self.check

    def check(self) -> tuple[bool, str]:
        if self.failing is not None and time.monotonic() - self.failing[0] >= FETCH_FAILING_RED_S:
            return False, (f"fetching from the consumer has failed for {time.monotonic() - self.failing[0]:.0f} s: "
                           f"{self.failing[1]}")
        if self.stuck is None:
            return True, "consuming"
        seq, n = self.stuck
        return False, f"message at stream seq {seq} delivered {n} times and still not settled"

    def fetched(self, exc: BaseException | None = None) -> None:
        """A fetch answered (messages or none) or failed with ``exc``."""
        if exc is None:
            self.failing = None
        elif self.failing is None:
            self.failing = (time.monotonic(), f"{type(exc).__name__}: {exc}"[:300])

    def seen(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta is None:
            return
        if meta.num_delivered > REDELIVERY_ALARM:
            self.stuck = (meta.sequence.stream, meta.num_delivered)
        elif self.stuck is not None and meta.sequence.stream != self.stuck[0]:
            self.stuck = None


async def pull_loop(sub: JetStreamContext.PullSubscription, handler: Callable[[Any], Awaitable[None]],
                    stop: asyncio.Event, logger: logging.Logger, alarm: RedeliveryAlarm | None = None,
                    batch: int = 1) -> None:
    """Fetch and handle messages one at a time until ``stop``; transient bus errors are retried, not fatal."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            if alarm is not None:
                alarm.fetched()
            if alarm is not None and alarm.stuck is not None:
                with contextlib.suppress(Exception):  # settled meanwhile (terminated, acked)?
                    if (await sub.consumer_info()).num_ack_pending == 0:
                        alarm.stuck = None
            continue
        except Exception as exc:
            if alarm is not None:
                alarm.fetched(exc)
            warn(logger, "BUS", "fetch failed; retrying", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
            continue
        if alarm is not None:
            alarm.fetched()
        for msg in msgs:
            if alarm is not None:
                alarm.seen(msg)
            try:
                await handler(msg)
            except Exception as exc:
                # Handlers settle their own messages; this is the backstop for a defect that escapes one, so a
                # bad message costs a log line and a delayed redelivery, never the service process.
                error(logger, "HANDLER_ERROR", "unhandled error; message redelivered later", subject=msg.subject,
                      error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await msg.nak(delay=DEAD_LETTER_RETRY_S)
