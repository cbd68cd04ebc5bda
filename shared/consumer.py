"""Consume contracts from a durable pull subscription with one error policy for every service.

- malformed / wrong-version message: dead-lettered with the reason, terminated (never redelivered)
- :class:`Reject` raised by the handler (bad data, bad signature...): dead-lettered, terminated
- any other exception: logged and redelivered after a delay; after ``MAX_DELIVERIES`` it is dead-lettered,
  so a poison message can neither crash the service nor loop forever, and nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.msg import Msg

from shared.bus import dead_letter, settle_refused
from shared.contracts import Contract, ContractError, decode
from shared.logging import error
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
