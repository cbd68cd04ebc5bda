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

import pytest

from services.executor.brokers.base import AmbiguousOrderError, OrderState, TransientBrokerError
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



class LateSigner(PaperBroker):
    """A venue whose lookups find nothing (the earlier executor's request has not landed yet); every lookup and
    every order request is timed."""

    def __init__(self) -> None:
        super().__init__({"USDT": 10_000.0}, RULES, fee_rate=0.001, slippage_bps=0.0)
        self.lookups: list[float] = []
        self.sends: list[float] = []

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        self.lookups.append(time.monotonic())
        return None

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        self.sends.append(time.monotonic())
        return await super().place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)


def journal_a_sent_intent_then_die(path: Path) -> float:
    """An earlier executor journals its leg "sent", spends GATE_S in the broker's gate (longer than the whole
    window), signs the request and dies with it on the wire.  Returns when it was signed."""
    from services.executor.brokers.client_order_id import client_order_id

    body = plan(BUYS[:1])
    leg = body.legs[0]
    cid = client_order_id(body.plan_id, leg.index)
    earlier = Journal(path)
    earlier.begin()
    earlier.record_intent(cid, body.cycle_id, body.plan_id, leg.index, leg.symbol, leg.side, leg.qty, leg.ref_price)
    earlier.set_intent_status(cid, "sent", "")
    earlier.commit()
    time.sleep(GATE_S)
    signed = time.monotonic()
    earlier.close()
    return signed


def test_after_a_restart_the_window_runs_from_when_the_dead_executor_could_still_sign(tmp_path: Path) -> None:
    """The restart's half of the gap: the window ran from the journaled "sent", so a request signed GATE_S later
    had no window left at all, and boot reconciliation trusted "not found" while it could still land."""
    from services.executor.reconcile import reconcile

    signed = journal_a_sent_intent_then_die(tmp_path / "journal.sqlite")
    venue = LateSigner()
    journal = Journal(tmp_path / "journal.sqlite")  # the restarted executor
    limits = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0, settle_s=SETTLE_S)
    counts = asyncio.run(reconcile(journal, venue, logging.getLogger("test"), limits))
    assert counts["unsent"] == 1  # settled as never placed ...
    trusted = venue.lookups[-1] - signed
    assert trusted >= SETTLE_S, f"'not found' trusted {trusted:.3f} s after the request was signed"  # ... in time


def test_a_resumed_plan_does_not_resend_before_the_dead_executors_request_could_land(tmp_path: Path) -> None:
    signed = journal_a_sent_intent_then_die(tmp_path / "journal.sqlite")
    venue = LateSigner()
    journal = Journal(tmp_path / "journal.sqlite")
    limits = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0, settle_s=SETTLE_S)
    done = asyncio.run(execute_plan(plan(BUYS[:1]), venue, journal, RULES, limits, logging.getLogger("test")))
    assert done.status == "executed" and len(venue.sends) == 1
    waited = venue.sends[0] - signed
    assert waited >= SETTLE_S, f"sent again {waited:.3f} s after the dead executor signed (window {SETTLE_S} s)"


class UnreachableAfterTheSend(PaperBroker):
    """The first order request is lost (its answer never came) and every lookup fails until ``reachable``."""

    def __init__(self) -> None:
        super().__init__({"USDT": 10_000.0}, RULES, fee_rate=0.001, slippage_bps=0.0)
        self.sends: list[float] = []
        self.reachable = False

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        self.sends.append(time.monotonic())
        if len(self.sends) == 1:
            lost = AmbiguousOrderError("no answer")
            lost.sent_at = self.sends[-1]
            raise lost
        return await super().place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        if not self.reachable:
            raise TransientBrokerError("exchange unreachable")
        return await super().fetch_order(symbol, client_order_id)


def test_a_plan_retried_in_the_same_process_waits_whatever_the_wall_clock_did(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sent the order, its lookups failed, the plan is tried again: the window runs from now.  Told
    apart by the journaled time, a wall clock stepped back an hour after the journal was opened (NTP correcting a
    fast clock at a machine's start) dated the send before the opening and gave it no window (found by an audit)."""
    import services.executor.journal as journal_module

    venue = UnreachableAfterTheSend()
    journal = Journal(tmp_path / "journal.sqlite")
    time.sleep(SETTLE_S)  # a process running for a while: a window timed from the opening has run out
    real_now_ms = journal_module.now_ms
    monkeypatch.setattr(journal_module, "now_ms", lambda: real_now_ms() - 3_600_000)
    limits = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0, settle_s=SETTLE_S, max_attempts=2)
    body = plan(BUYS[:1])
    with pytest.raises(TransientBrokerError):
        asyncio.run(execute_plan(body, venue, journal, RULES, limits, logging.getLogger("test")))
    venue.reachable = True
    done = asyncio.run(execute_plan(body, venue, journal, RULES, limits, logging.getLogger("test")))
    assert done.status == "executed" and len(venue.sends) == 2
    waited = venue.sends[1] - venue.sends[0]
    assert waited >= SETTLE_S, f"sent again {waited:.3f} s after the first request left (window {SETTLE_S} s)"
