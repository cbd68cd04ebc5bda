"""An exchange that does not answer is the environment's fault, not the plan's: the plan waits, never dropped.

A transient broker error (the exchange's clock, balances or prices unreadable, a 5xx, a timeout, a rate limit)
raised while a plan is handled says nothing about the plan: the same signed plan, perhaps a stop-loss exit,
will go through once the exchange answers.  Dead-lettering it after a few deliveries, as a poison message is,
would drop it over a 30-second outage.  So, like a journal fault (``journal.journal_fault``), it is kept
unacknowledged and redelivered with backoff for as long as the outage lasts, /readyz is red with the reason
(``exchange`` check), each failed delivery is logged ``[EXCHANGE_DOWN]`` and counted, and one line says when the
exchange answers again.  Only faults of the plan's content are dead-lettered.
"""

from __future__ import annotations

import logging

from services.executor.brokers.base import TransientBrokerError
from services.executor.exchange_calls import OrderUnresolved
from shared.health import HealthState
from shared.logging import error, info


def is_exchange_outage(exc: BaseException) -> bool:
    """A failure to reach or read the exchange (retry later), as opposed to a verdict on the plan."""
    return isinstance(exc, TransientBrokerError)


class ExchangeOutage:
    def __init__(self, health: HealthState, logger: logging.Logger) -> None:
        self.health, self.logger = health, logger
        self.reason: str | None = None  # why the exchange is considered unreachable; None: it answers
        self.what = "exchange unreachable"
        health.checks["exchange"] = lambda: (self.reason is None, "reachable" if self.reason is None else
                                             f"{self.what} ({self.reason}); plans wait")

    def failed(self, exc: BaseException, **fields: object) -> None:
        self.reason = f"{type(exc).__name__}: {exc}"[:300]
        self.health.inc("exchange_faults")
        if isinstance(exc, OrderUnresolved):  # the exchange answers; what it says cannot settle the order
            self.what = "an order cannot be settled"
            error(self.logger, "RECONCILE", "an order cannot be settled; its plan waits (check it on the exchange, "
                  "then `aura journal settle <clientOrderId>`)", error=self.reason, **fields)
            return
        self.what = "exchange unreachable"
        error(self.logger, "EXCHANGE_DOWN", "exchange unreachable; waiting for it (a plan is redelivered, never "
              "dead-lettered)", error=self.reason, **fields)

    def answered(self) -> None:
        """A handler that needed the exchange went through: the outage, if any, is over."""
        if self.reason is not None:
            info(self.logger, "EXCHANGE_DOWN", "exchange answers again; waiting plans proceed", was=self.reason)
            self.reason = None
