"""``aura journal settle``: the operator closes an order the executor cannot settle by itself.

An order that may be on the exchange is never placed again on a guess (``exchange_calls.OrderUnresolved``): when
the exchange acknowledged it once and now says it has no such order, or can no longer look it up because its pair
left the list, its plan waits with /readyz red, and every later plan behind it.  After checking the order on the
exchange, the operator writes a signed request (``operator.settle``, naming the clientOrderId); the executor
verifies it and, when that order is the one a plan waits on, closes the intent as canceled (fills already
journaled stay, nothing more is booked; journaled with who asked and why), and the plan goes on.  Whatever else
the order filled shows at the next comparison of the books as a difference ([RECONCILE] halt), which ``aura
journal adopt`` then records: nothing is booked in the exchange's name without the operator.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js.kv import KeyValue

from services.executor.journal import Journal
from shared.allowance import SaidOnce
from shared.logging import warn
from shared.operator_requests import SETTLE_KEY, SettleRequest, read_request

SETTLED = "operator_settled"  # the journal event of each settle request applied


def last_settle_ms(journal: Journal) -> int:
    """The request time of the newest settle request applied (0: none), so a request is applied once."""
    cycle_id = journal.last_event_cycle(SETTLED)
    return int(cycle_id.removeprefix("settle-")) if cycle_id else 0


async def apply_settle(journal: Journal, kv: KeyValue, operator_key: Ed25519PublicKey, logger: logging.Logger,
                       waiting: str) -> str | None:
    """Apply the operator's newest settle request if it is new and names ``waiting``, the order a plan waits on;
    the clientOrderId it closed, else None.  A request for another order stays unapplied (said once): it is
    applied when that order is the one waiting, never to a sibling leg."""
    request, problem = await read_request(kv, SETTLE_KEY, operator_key, SettleRequest)
    if problem:
        if _said.first("problem", problem):
            warn(logger, "RECONCILE", "settle request refused", error=problem)
        return None
    if request is None:
        return None
    applied_ms = last_settle_ms(journal)
    if request.requested_at_ms <= applied_ms:
        if _said.first("old", request.requested_at_ms):
            warn(logger, "RECONCILE", "settle request not newer than the last one applied; ignored (run `aura "
                 "journal settle` again, and check the clocks)", requested_at_ms=request.requested_at_ms,
                 last_applied_ms=applied_ms, cid=request.client_order_id[:64])
        return None
    cid = request.client_order_id[:64]
    if cid != waiting:
        if _said.first("other", request.requested_at_ms):
            warn(logger, "RECONCILE", "settle request names another order than the one waiting; not applied",
                 cid=cid, waiting=waiting)
        return None
    status = journal.intent_state(cid)[0] if cid else "unknown"
    journal.begin()
    journal.set_intent_status(cid, "canceled", f"settled by {request.requested_by}: {request.reason}"[:300])
    journal.event(f"settle-{request.requested_at_ms}", SETTLED, cid=cid, was=status, by=request.requested_by,
                  reason=request.reason[:300])
    journal.commit()
    warn(logger, "RECONCILE", "order settled by the operator: closed as canceled, its fills already journaled kept "
         "and nothing more booked; a difference it leaves shows at the next comparison of the books", cid=cid,
         was=status, by=request.requested_by, reason=request.reason)
    return cid


# The last stale or mismatched request reported, so a retried plan does not repeat the line.
_said = SaidOnce()
