"""``aura journal settle``: the operator closes an order the executor cannot settle by itself.

An order that may be on the exchange is never placed again on a guess (``exchange_calls.OrderUnresolved``): when
the exchange acknowledged it once and now says it has no such order, or can no longer look it up because its pair
left the list, its plan waits with /readyz red, and every later plan behind it.  After checking the order on the
exchange, the operator writes a signed request (``operator.settle``, naming the clientOrderId); the executor
verifies it, closes that intent as canceled with no fills (journaled with who asked and why), and the plan goes
on.  Whatever the order did fill shows at the next comparison of the books as a difference ([RECONCILE] halt),
which ``aura journal adopt`` then records: nothing is booked in the exchange's name without the operator.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js.kv import KeyValue

from services.executor.journal import OPEN_INTENT_STATES, Journal
from shared.logging import warn
from shared.operator_requests import SETTLE_KEY, SettleRequest, read_request

SETTLED = "operator_settled"  # the journal event of each settle request applied (or found with nothing to close)


def last_settle_ms(journal: Journal) -> int:
    """The request time of the newest settle request applied (0: none), so a request is applied once."""
    cycle_id = journal.last_event_cycle(SETTLED)
    return int(cycle_id.removeprefix("settle-")) if cycle_id else 0


async def apply_settle(journal: Journal, kv: KeyValue, operator_key: Ed25519PublicKey,
                       logger: logging.Logger) -> str | None:
    """Apply the operator's newest settle request if it is new; the clientOrderId it closed, else None."""
    request, problem = await read_request(kv, SETTLE_KEY, operator_key, SettleRequest)
    if problem:
        warn(logger, "RECONCILE", "settle request refused", error=problem)
        return None
    if request is None or request.requested_at_ms <= last_settle_ms(journal):
        return None
    cid = request.client_order_id[:64]
    try:
        status = journal.intent_state(cid)[0]
    except KeyError:
        status = "unknown"
    closing = status in OPEN_INTENT_STATES
    journal.begin()
    if closing:
        journal.set_intent_status(cid, "canceled", f"settled by {request.requested_by}: {request.reason}"[:300])
    journal.event(f"settle-{request.requested_at_ms}", SETTLED, cid=cid, was=status, closed=closing,
                  by=request.requested_by, reason=request.reason[:300])
    journal.commit()
    if closing:
        warn(logger, "RECONCILE", "order settled by the operator: closed as canceled with no fills; a difference "
             "it leaves shows at the next comparison of the books", cid=cid, was=status, by=request.requested_by,
             reason=request.reason)
        return cid
    warn(logger, "RECONCILE", "settle request for an order that is not open; nothing changed", cid=cid, was=status)
    return None
