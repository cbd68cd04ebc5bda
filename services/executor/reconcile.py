"""Boot reconciliation, logged [BOOT]: settle every intent the journal left open before a crash.

For each intent that was pending/sent/acked (journaled, maybe on the wire): look the order up by clientOrderId.
- found: journal the order and any fills that arrived while we were down; the intent is final, or "acked"
  while the order is still working (the resumed plan waits for it or cancels the rest).
- not found and never sent ("pending"): mark it "unsent" so the resumed plan places it (with the same id).
- not found although "sent": trusted only once the request can no longer land (``settle_s`` after it could
  have been signed: ``execution`` rule 6, ``exchange_calls.sent_settle_left``); until then we wait and ask
  again — nothing is re-sent on a guess.
- not found although the exchange once acknowledged it ("acked", or its order row journaled), or not
  lookup-able at all (its pair delisted): left open and logged [RECONCILE]; its plan then waits with /readyz
  red (``OrderUnresolved``) instead of placing the order a second time or crashing the boot.
"""

from __future__ import annotations

import logging

from services.executor.brokers.base import Broker, TransientBrokerError
from services.executor.exchange_calls import (
    ExecutionLimits,
    OrderUnresolved,
    sent_settle_left,
    settle_missing,
    settled_lookup,
    unresolved_lookup,
)
from services.executor.execution import ExecutionResult, final_status, journal_order
from services.executor.journal import Journal
from shared.logging import info, warn


async def reconcile(journal: Journal, broker: Broker, logger: logging.Logger,
                    limits: ExecutionLimits) -> dict[str, int]:
    """Settle every open intent (module docstring); the lookups are the plan path's (``settled_lookup``: retried
    as ``limits`` say, a "not found" of a sent order trusted only ``limits.settle_s`` after it was sent)."""
    counts = {"open": 0, "found": 0, "unsent": 0, "new_fills": 0, "unreachable": 0, "unresolved": 0}
    for intent in journal.open_intents():
        counts["open"] += 1
        cid, symbol = intent["client_order_id"], intent["symbol"]
        # A pending intent was never sent; a sent one may still land until settle_s after it was signed.
        settle_left = sent_settle_left(journal, limits, cid) if intent["status"] == "sent" else 0.0
        try:
            order = await unresolved_lookup(settled_lookup(broker, symbol, cid, limits, logger, settle_left),
                                            cid, symbol)
            if order is None:
                settle_missing(journal, cid, intent["status"], symbol)
        except OrderUnresolved as exc:
            if intent["status"] == "pending":
                # Journaled, never sent ("sent" is committed before any request): it cannot be on the exchange.
                order = None
            else:
                counts["unresolved"] += 1
                warn(logger, "RECONCILE", "open order cannot be settled; left open, its plan waits", cid=cid,
                     symbol=symbol, error=str(exc))
                continue
        except TransientBrokerError as exc:
            counts["unreachable"] += 1
            warn(logger, "BOOT", "could not reach the exchange for an open intent; left open", cid=cid,
                 error=str(exc))
            continue
        journal.begin()
        if order is None:
            journal.set_intent_status(cid, "unsent", "exchange has no such order")
            counts["unsent"] += 1
        else:
            result = ExecutionResult()
            journal_order(journal, intent["cycle_id"], order, result, cid)
            counts["new_fills"] += len(result.new_fills)
            if order.is_final:
                journal.set_intent_status(cid, final_status(order), "reconciled at boot")
            else:
                journal.set_intent_status(cid, "acked", "working on the exchange at boot")
            counts["found"] += 1
        journal.event(intent["cycle_id"], "reconciled", cid=cid, found=order is not None)
        journal.commit()
    info(logger, "BOOT", "reconciliation finished", **counts)
    return counts
