"""Rule 6 of execution.py: after an order request whose outcome is unknown, "not found" is trusted only once the
request can no longer land, ``settle_s`` after it could have been signed.

The gap (found by an audit): the window ran from before the broker's call, but the CCXT broker may first spend
seconds measuring the exchange's clock again (after a timestamp refusal) and signs the request after that; the
window then closed early by as much, and a resend could meet the first request landing late: a double fill
(Binance refuses a duplicate clientOrderId only while the first order is open).  The broker now says when the
request could have left (``BrokerError.sent_at``) and the window runs from there."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from services.executor.brokers.base import AmbiguousOrderError, OrderState
from services.executor.brokers.paper import PaperBroker
from services.executor.exchange_calls import ExecutionLimits
from services.executor.execution import execute_plan
from services.executor.journal import Journal
from tests.unit.test_execution import BUYS, RULES, plan

SETTLE_S = 0.4
GATE_S = 0.4  # the broker's own work before the send: longer than the whole window


class SlowGateVenue(PaperBroker):
    """The first order request leaves only after ``GATE_S`` and its answer is lost (it never booked here);
    the time of every request is kept."""

    def __init__(self) -> None:
        super().__init__({"USDT": 10_000.0}, RULES, fee_rate=0.001, slippage_bps=0.0)
        self.sends: list[float] = []

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        if not self.sends:
            await asyncio.sleep(GATE_S)  # the clock measured again before signing
            self.sends.append(time.monotonic())
            lost = AmbiguousOrderError("no answer")
            lost.sent_at = self.sends[-1]
            raise lost
        self.sends.append(time.monotonic())
        return await super().place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)


def test_the_window_runs_from_when_the_request_could_leave_not_from_the_call(tmp_path: Path) -> None:
    venue = SlowGateVenue()
    journal = Journal(tmp_path / "journal.sqlite")
    limits = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0, settle_s=SETTLE_S)
    done = asyncio.run(execute_plan(plan(BUYS[:1]), venue, journal, RULES, limits, logging.getLogger("test")))
    assert done.status == "executed" and len(venue.sends) == 2
    waited = venue.sends[1] - venue.sends[0]
    assert waited >= SETTLE_S, f"sent again {waited:.3f} s after the first request left (window {SETTLE_S} s)"

