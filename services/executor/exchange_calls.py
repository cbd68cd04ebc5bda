"""Calls to the exchange the executor repeats or settles before it trusts an answer.

Retries (a transient error is retried, never taken as an answer), the exchange's price now, and the lookup of
an order that may be on the exchange: "not found" is trusted only once a late request can no longer land
(``execution`` rule 6) and never for an order the exchange once acknowledged (:class:`OrderUnresolved`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from services.executor.brokers.base import (
    Broker,
    BrokerError,
    OrderState,
    Quote,
    RateLimitedError,
    TransientBrokerError,
)
from services.executor.journal import Journal
from shared.logging import info, warn

T = TypeVar("T")

DEFAULT_SETTLE_S = 11.0  # ccxt's Binance recvWindow (10 s) plus the 1 s a timestamp may run ahead


@dataclass(frozen=True)
class ExecutionLimits:
    max_order_usdt: float
    max_attempts: int = 6
    backoff_s: float = 0.2
    fill_poll_s: float = 0.1
    fill_timeout_s: float = 10.0
    # How long after sending a request its arrival at the exchange is still possible (see rule 6).  Must be at
    # least the recvWindow the broker signs with; tests against the simulator shrink both together.
    settle_s: float = DEFAULT_SETTLE_S
    min_notional_margin: float = 0.01


# The longest Retry-After honoured inside one request loop; a longer ban ends the attempt (the plan is retried).
MAX_RETRY_AFTER_S = 30.0


def rate_limit_pause(exc: TransientBrokerError) -> float:
    """The exchange's Retry-After for a 429 (capped), else 0.  Every request loop honours it: hammering after
    a 429 is what Binance escalates to an IP ban."""
    return min(exc.retry_after_s, MAX_RETRY_AFTER_S) if isinstance(exc, RateLimitedError) else 0.0


def retry_delay(exc: TransientBrokerError, attempt: int, limits: ExecutionLimits) -> float:
    """How long to wait before the next attempt: the linear backoff, or the Retry-After if longer."""
    return max(limits.backoff_s * attempt, rate_limit_pause(exc))


async def free_balance_with_retry(broker: Broker, asset: str, limits: ExecutionLimits,
                                  logger: logging.Logger) -> float:
    """Free balance of ``asset`` for the sell clamp.  A transient failure is retried, never taken as "zero"
    (that would skip the sell); if every attempt fails this raises TransientBrokerError rather than let the
    sell go out unclamped: an unclamped sell above the free balance is rejected for good (-2010) and the exit
    would be lost, whereas a raised error leaves the intent unsent and the plan is retried on redelivery."""
    balances = await retried(broker.fetch_free_balances, limits, logger, "SELL_CLAMP",
                              "balance fetch failed; retrying",
                              f"free {asset} balance unreadable after {limits.max_attempts} attempts; "
                              "sell not placed unclamped", asset=asset)
    return balances.get(asset, 0.0)


async def retried(call: Callable[[], Awaitable[T]], limits: ExecutionLimits, logger: logging.Logger, tag: str,
                   retrying: str, gave_up: str, **fields: object) -> T:
    """``call()``, retried on a transient broker error (waiting the backoff or the exchange's Retry-After)
    up to ``limits.max_attempts`` times; then TransientBrokerError(``gave_up``)."""
    for attempt in range(1, limits.max_attempts + 1):
        try:
            return await call()
        except TransientBrokerError as exc:
            wait = retry_delay(exc, attempt, limits)
            warn(logger, tag, retrying, **fields, attempt=attempt, retry_in_s=wait, error=str(exc))
            await asyncio.sleep(wait)
    raise TransientBrokerError(gave_up)


class OrderUnresolved(TransientBrokerError):
    """An order that may be on the exchange cannot be settled: the exchange acknowledged it once and now says it
    has no such order (Binance answers -2013 now and then, and accepts the id again once the order is closed),
    or it cannot look the order up at all (its pair left the exchange's list).  Placing it again could fill it
    twice, so nothing is placed: the plan waits with /readyz red until a lookup answers (or the operator settles
    it: services/executor/settle.py)."""

    def __init__(self, message: str, client_order_id: str) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id


def settle_missing(journal: Journal, cid: str, status: str, symbol: str) -> None:
    """Raise :class:`OrderUnresolved` when "not found" cannot mean "never placed": the exchange knew the order."""
    if status == "acked" or journal.order_acknowledged(cid):
        raise OrderUnresolved(f"order {cid} ({symbol}) was acknowledged by the exchange, which now says it has no "
                              "such order; not placed again", cid)


async def unresolved_lookup(lookup: Awaitable[OrderState | None], cid: str, symbol: str) -> OrderState | None:
    """``lookup`` with a refusal to look the order up (not an outage) turned into :class:`OrderUnresolved`."""
    try:
        return await lookup
    except TransientBrokerError:
        raise
    except BrokerError as exc:
        raise OrderUnresolved(f"order {cid} ({symbol}) may be on the exchange and cannot be looked up: {exc}",
                              cid) from exc


def sent_settle_left(journal: Journal, limits: ExecutionLimits, cid: str) -> float:
    """Seconds a "not found" of an order that may be on the exchange must still wait (rule 6) when the time of
    its send is lost (a restart, a plan retried after a failure).

    A request is signed after its intent is journaled "sent", maybe seconds later: the broker may first measure
    the exchange's clock again, ccxt's rate limiter may hold it; timed from the journaled time the window closed
    early by as much, and a resend could meet the first request landing late: a double fill.  What is known is
    when it was signed by the latest: an earlier executor signed before this one opened the journal (it takes
    the journal's lock first, so the earlier one had let go); this process, at any moment until now.  So the
    window runs from the journal's opening, or from now (a full window) for an order this process sent.  Which
    process sent it is known from memory, not from its journaled wall-clock time (a clock stepped back would
    date this process's own send before the opening)."""
    if cid in journal.sent_here:
        return limits.settle_s
    return limits.settle_s - (time.monotonic() - journal.opened_monotonic)


async def settled_lookup(broker: Broker, symbol: str, cid: str, limits: ExecutionLimits, logger: logging.Logger,
                         settle_left_s: float) -> OrderState | None:
    """Look ``cid`` up; a "not found" is trusted only once ``settle_left_s`` has run out (rule 6), and only when
    a second lookup agrees: Binance answers -2013 now and then for an order it holds, and the caller may send the
    id again on a "not found" (a booked market order that filled is no longer a duplicate for Binance)."""
    found = await lookup_order(broker, symbol, cid, limits, logger)
    if found is None and settle_left_s > 0:
        info(logger, "IDEMPOTENCY", "order not found yet; waiting until a late request can no longer land",
             cid=cid, wait_s=round(settle_left_s, 3))
        await asyncio.sleep(settle_left_s)
        found = await lookup_order(broker, symbol, cid, limits, logger)
    if found is None:
        await asyncio.sleep(limits.backoff_s)
        found = await lookup_order(broker, symbol, cid, limits, logger)
    return found


async def lookup_order(broker: Broker, symbol: str, cid: str, limits: ExecutionLimits,
                  logger: logging.Logger) -> OrderState | None:
    return await retried(lambda: broker.fetch_order(symbol, cid), limits, logger, "AMBIGUOUS",
                          "order lookup failed; retrying", f"could not look up order {cid}", cid=cid)


async def live_quote(broker: Broker, symbol: str, limits: ExecutionLimits, logger: logging.Logger) -> Quote:
    """The exchange's last price and top of book now (retried); zeros when the exchange lists no price."""
    quotes = await retried(lambda: broker.fetch_quotes([symbol]), limits, logger, "PRICE_GUARD",
                           "price read failed; retrying", f"price of {symbol} unreadable", symbol=symbol)
    return quotes.get(symbol, Quote(0.0, 0.0, 0.0))
