"""Execute one approved plan against a broker, journaling every step before it happens.

Idempotency rules, in order of importance:
1. Every leg has a deterministic clientOrderId (hash of plan id and leg index); a retry reuses it.
2. The intent is committed to the journal *before* the network call.
3. After an ambiguous failure (timeout, 5xx, lost response) the order is looked up by clientOrderId first;
   it is re-sent only when the exchange confirms it has never seen it.
4. A duplicate-id rejection means "the order exists": it is fetched, never placed again.
5. Fills are journaled by trade id (INSERT OR IGNORE), so a fill seen twice is counted once.
6. "Not found" is only final once a request still travelling could no longer be accepted: the exchange refuses
   a signed request older than its recvWindow, so a lookup is trusted ``settle_s`` after the request could last
   have been signed (its send's own time, or, when that is lost, ``exchange_calls.sent_settle_left``).  Before
   that, a lost request may still land; resending then would book the order twice (Binance checks duplicate
   clientOrderIds only among *open* orders, so a filled first copy does not stop a second one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TypeVar

from aura.strategy.rebalance import PROTECTIVE_EXITS, floor_to_step
from aura.strategy.types import MarketRule
from services.executor.brokers.base import (
    AmbiguousOrderError,
    BookedOrderError,
    Broker,
    CredentialsRejected,
    DuplicateOrderError,
    Fill,
    OrderRejectedError,
    OrderState,
    RateLimitedError,
    TransientBrokerError,
)
from services.executor.brokers.client_order_id import client_order_id
from services.executor.brokers.paper import base_asset
from services.executor.exchange_calls import (
    ExecutionLimits,
    OrderUnresolved,
    free_balance_with_retry,
    live_quote,
    lookup_order,
    retry_delay,
    sent_settle_left,
    settle_missing,
    settled_lookup,
    unresolved_lookup,
)
from services.executor.journal import Journal
from services.executor.leg_bounds import CAPPED, NO_QUOTE_BUYS, TOO_SMALL_SKIPS, clamp_leg, cut_by_reason, cut_short
from services.executor.live_guard import LiveGuard, buy_budget, fill_slippage, price_refusal, spend
from shared.contracts import PlanBody, PlanLeg
from shared.logging import info, warn

T = TypeVar("T")

FINAL_INTENT_STATES = ("filled", "partial", "rejected", "skipped", "canceled")
MAYBE_ON_EXCHANGE = ("sent", "acked")  # a request may have reached the exchange: look it up before anything
@dataclass
class ExecutionResult:
    status: str = "executed"  # "executed" | "partial"
    reasons: list[str] = field(default_factory=list)
    new_fills: list[tuple[str, str, str, float, float, float]] = field(default_factory=list)  # tid,cid,sym,q,p,fee


async def place_idempotent(broker: Broker, journal: Journal, leg: PlanLeg, qty: float, cid: str,
                           limits: ExecutionLimits, logger: logging.Logger,
                           quote_amount: float | None = None) -> OrderState | None:
    """Place (or find) the order for ``cid``. Raises OrderRejectedError on a final rejection."""
    last_sent = 0.0  # monotonic time of the last request that may have reached the exchange
    for attempt in range(1, limits.max_attempts + 1):
        try:
            if attempt > 1:
                journal.mark_intent(cid, "sent")  # a new send time: the restart path settles on the latest one
            last_sent = time.monotonic()
            return await broker.place_market_order(leg.symbol, leg.side, qty, cid, leg.ref_price, quote_amount)
        except (DuplicateOrderError, BookedOrderError) as exc:
            # The exchange says it holds this id, or answered its placement: the order was booked, whatever a
            # lookup answers next.  Journaled as acknowledged, so a "not found" (Binance answers -2013 now and
            # then, and refuses a duplicate id only while the first order is open) never sends it again, here or
            # after a restart (settle_missing).  A booked order whose fills could not be read was once sent again
            # after three such answers: two orders under one id, twice the leg spent (found by an audit).
            why = ("the exchange answered 'duplicate order': it holds this id" if isinstance(exc, DuplicateOrderError)
                   else "the exchange answered the placement; reading its fills failed")
            info(logger, "IDEMPOTENCY", "order exists; fetching it, never placing it again", cid=cid, why=why)
            journal.begin()
            journal.set_intent_status(cid, "acked", why)
            journal.commit()
            found = await lookup_order(broker, leg.symbol, cid, limits, logger)
            if found is not None:
                return found
            raise OrderUnresolved(f"order {cid} ({leg.symbol}) is on the exchange ({why}), and a lookup says it "
                                  "has no such order; not placed again", cid) from exc
        except OrderRejectedError:
            raise
        except CredentialsRejected:
            # Refused before the matching engine (key, IP or permissions): the order is not on the exchange.  The
            # leg goes back to unsent, so the plan counts as not having reached the exchange and its data is
            # judged fresh again when the key works (runner.run_plan), not traded however old its bar by then.
            journal.begin()
            journal.set_intent_status(cid, "unsent", "the exchange refused the credentials")
            journal.commit()
            raise
        except RateLimitedError as exc:
            # Refused before the matching engine (Binance answers 429 without booking): waiting is all it takes.
            warn(logger, "RATE_LIMIT", "rate limited; backing off", cid=cid, retry_after_s=exc.retry_after_s)
            await asyncio.sleep(retry_delay(exc, attempt, limits))
            continue
        except (AmbiguousOrderError, TransientBrokerError) as exc:
            # The window runs from when the request could have been signed: a broker that first measured the
            # exchange's clock again sent it seconds after ``last_sent``.
            last_sent = max(last_sent, exc.sent_at or 0.0)
            warn(logger, "AMBIGUOUS", "order request outcome unknown; looking it up by clientOrderId", cid=cid,
                 attempt=attempt, error=f"{type(exc).__name__}: {exc}")
            found = await settled_lookup(broker, leg.symbol, cid, limits, logger,
                                         settle_left_s=limits.settle_s - (time.monotonic() - last_sent))
            if found is not None:
                return found
            # The exchange confirms it never received the order, after the request could no longer arrive:
            # resending the same id is safe.
        await asyncio.sleep(limits.backoff_s * attempt)
    raise TransientBrokerError(f"order {cid} not confirmed after {limits.max_attempts} attempts")


async def wait_final(broker: Broker, order: OrderState, cid: str, limits: ExecutionLimits) -> OrderState:
    """Poll a working order until it is final; cancel the rest after ``fill_timeout_s`` (partial fill)."""
    deadline = time.monotonic() + limits.fill_timeout_s
    while not order.is_final and time.monotonic() < deadline:
        await asyncio.sleep(limits.fill_poll_s)
        try:
            order = await broker.fetch_order(order.symbol, cid) or order
        except TransientBrokerError:
            continue
    if not order.is_final:
        canceled = await broker.cancel_order(order.symbol, cid)
        order = canceled or order
        if not order.is_final:  # the cancel answer was not final: ask once more, by our id
            order = await broker.fetch_order(order.symbol, cid) or order
    return order


def journal_order(journal: Journal, cycle_id: str, order: OrderState, result: ExecutionResult,
                  cid: str | None = None) -> list[Fill]:
    """Journal the order and its fills under ``cid`` (ours), not the id in the answer: a Binance cancel answer
    carries the *cancel request's* clientOrderId, which would orphan the fills from their intent.  Returns the
    fills journaled now (not those an earlier run, or the boot's reconciliation, had journaled already)."""
    cid = cid or order.client_order_id
    journal.upsert_order(cid, cycle_id, order.exchange_order_id, order.symbol, order.side, order.status,
                         order.qty, order.filled_qty, order.avg_price)
    new = []
    for f in order.fills:
        if journal.record_fill(f.trade_id, cycle_id, cid, f.symbol, f.side, f.qty, f.price, f.fee, f.ts_ms,
                               fee_base=f.fee_base, fee_quote=f.fee_quote):
            result.new_fills.append((f.trade_id, cid, f.symbol, f.qty, f.price, f.fee))
            new.append(f)
    return new


def final_status(order: OrderState) -> str:
    if order.filled_qty >= order.qty - 1e-12 and order.filled_qty > 0:
        return "filled"
    return "partial" if order.filled_qty > 0 else "canceled"


async def execute_plan(plan: PlanBody, broker: Broker, journal: Journal, rules: dict[str, MarketRule],
                       limits: ExecutionLimits, logger: logging.Logger,
                       guard: LiveGuard | None = None, resumed: bool = False, stale: str = "") -> ExecutionResult:
    """Execute (or finish executing) ``plan``; safe to call again for the same plan after a crash.
    ``guard`` (live): new legs are priced, capped and budgeted at the exchange's price (:class:`LiveGuard`).
    ``resumed``: the plan was under way before: every leg not final is looked up before it is placed, even one
    the journal shows as never sent.  ``stale`` (why): no leg is sent, only what may be on the exchange settled."""
    result = ExecutionResult()
    # Journal every intent up front (one commit) so a crash at any later point leaves a complete record.
    journal.begin()
    for leg in plan.legs:
        journal.record_intent(client_order_id(plan.plan_id, leg.index), plan.cycle_id, plan.plan_id, leg.index,
                              leg.symbol, leg.side, leg.qty, leg.ref_price)
    journal.commit()
    for leg in plan.legs:  # sells come first in a plan: they free the cash the buys need
        cid = client_order_id(plan.plan_id, leg.index)
        status, reason, _ = journal.intent_state(cid)
        if status in FINAL_INTENT_STATES:
            if guard is not None and status in ("filled", "partial"):
                _judge_fill_journaled_elsewhere(journal, plan, leg, cid, guard, result, logger)
            # Done before a restart; a leg that did not fully fill, or that the cap cut, still makes the plan
            # "partial", as it would have without the restart.
            cut = cut_by_reason(reason) or cut_short(
                leg, journal.order_fill(cid)[0], rules.get(leg.symbol), limits,
                _price_read(journal, plan, cid) or leg.ref_price)
            # A leg skipped for anything but its size (the price guard, a pair gone, data too old) made the plan
            # partial in the run that skipped it; one too small to trade did not (TOO_SMALL_SKIPS).
            cut = cut or (status == "skipped" and not reason.startswith(TOO_SMALL_SKIPS))
            if status in ("partial", "rejected", "canceled") or cut:
                result.status = "partial"
                result.reasons.append(f"leg {leg.index} {leg.symbol}: {status} before a restart ({reason})")
            continue
        if status in MAYBE_ON_EXCHANGE or (resumed and leg.symbol in rules):
            # A previous run may have placed it: find it; only a settled "not found" allows placing it.  On a
            # resumed plan this holds for a leg journaled as unsent too: the journal may have lost that commit,
            # so its "not found" waits as a sent one's does.  An acknowledged one's is never believed (it is
            # not placed again: unresolved_lookup), so waiting for it would change nothing.
            settle_left = sent_settle_left(journal, limits, cid) if status != "acked" else 0.0
            found = await unresolved_lookup(settled_lookup(broker, leg.symbol, cid, limits, logger, settle_left),
                                            cid, leg.symbol)
            if found is not None:
                info(logger, "IDEMPOTENCY", "order from before a restart found; not placing it again", cid=cid,
                     status=found.status)
                await _finish_order(broker, journal, plan, leg, cid, found, reason, limits, result, logger, guard,
                                    _price_read(journal, plan, cid), rules.get(leg.symbol))
                continue
            settle_missing(journal, cid, status, leg.symbol)
            journal.begin()
            journal.set_intent_status(cid, "unsent", "exchange has no such order")
            journal.commit()
        if stale:
            _skip(journal, result, leg, cid, stale)
            continue
        if leg.symbol not in rules:
            # Not (or no longer) listed by the venue: nothing to place, and no price or balance to ask it for.
            journal.begin()
            journal.set_intent_status(cid, "skipped", f"no market rules for {leg.symbol}")
            journal.commit()
            result.status = "partial"
            result.reasons.append(f"leg {leg.index} {leg.symbol}: not listed by the venue")
            warn(logger, "SKIP", "leg skipped: the venue does not list its pair", cid=cid, symbol=leg.symbol)
            continue
        free = None
        if leg.side == "sell":
            free = await free_balance_with_retry(broker, base_asset(leg.symbol), limits, logger)
        price, quote_amount = leg.ref_price, None
        if guard is not None:
            quote = await live_quote(broker, leg.symbol, limits, logger)
            refusal = price_refusal(leg, quote, guard.max_price_deviation, guard.max_spread)
            if refusal and quote.last > 0 and leg.side == "sell" and leg.reason in PROTECTIVE_EXITS:
                # A stop-loss or kill-switch exit in a fast market (a gap past the deviation, a book gone wide) is
                # sent anyway: held back, the position stays exactly when it must go.  A sell spends no cash and
                # is bounded by the holding; what the guard saw is journaled and logged.
                journal.begin()
                journal.event(plan.cycle_id, "price_guard_overridden", client_order_id=cid, symbol=leg.symbol,
                              reason=leg.reason, ref_price=leg.ref_price, exchange_price=quote.last, bid=quote.bid,
                              ask=quote.ask)
                journal.commit()
                warn(logger, "PRICE_GUARD", "protective exit sent although the price guard would refuse it", cid=cid,
                     symbol=leg.symbol, leg_reason=leg.reason, bid=quote.bid, ask=quote.ask, guard=refusal)
                refusal = ""
            if refusal:
                journal.begin()
                journal.set_intent_status(cid, "skipped", refusal)
                journal.event(plan.cycle_id, "price_guard", client_order_id=cid, symbol=leg.symbol,
                              ref_price=leg.ref_price, exchange_price=quote.last, bid=quote.bid, ask=quote.ask)
                journal.commit()
                result.status = "partial"
                result.reasons.append(f"leg {leg.index} {leg.symbol}: {refusal}")
                warn(logger, "PRICE_GUARD", "leg refused: the exchange's price or book does not allow it",
                     cid=cid, symbol=leg.symbol, ref_price=leg.ref_price, exchange_price=quote.last,
                     bid=quote.bid, ask=quote.ask, reason=refusal)
                continue
            price = quote.side_price(leg.side) or quote.last
        qty, note = clamp_leg(leg, rules.get(leg.symbol), free, limits, price)
        if guard is not None and leg.side == "buy" and qty > 0:
            quote_amount, budget_note = buy_budget(qty, price, rules[leg.symbol], limits, guard)
            note = "; ".join(x for x in (note, budget_note) if x)
            # A venue that cannot buy by quote amount (ccxt's createMarketBuyOrderWithCost) buys ``qty``: never
            # more than the budget buys at the price just read, with the deviation the guard allows as headroom
            # for the price moving before the match.  (Binance spends ``quote_amount`` exactly.)  Live trading on
            # such a venue is refused at start (shared/config.py LIVE_VENUES, live.py); this stays the bound for
            # any broker that buys by quantity.
            affordable = quote_amount / (price * (1.0 + guard.max_price_deviation)) if quote_amount > 0 else 0.0
            qty = min(qty, floor_to_step(affordable, rules[leg.symbol].step_size))
            if qty > 0 and not rules[leg.symbol].quote_buys:
                # Binance refuses quote-amount market buys on a pair whose quoteOrderQtyMarketAllowed is false
                # (it once was on every pair): each would be rejected.  Bought by quantity instead, a move between
                # the price read and the match could spend past the cap; the leg waits for the venue instead.
                qty, note = 0.0, "; ".join(x for x in (note, f"{NO_QUOTE_BUYS} on {leg.symbol}") if x)
        if note:
            result.reasons.append(f"leg {leg.index} {leg.symbol}: {note}")
        if cut_by_reason(note):
            result.status = "partial"  # the plan did not reach its target: never reported as executed
        if qty <= 0:
            journal.begin()
            journal.set_intent_status(cid, "skipped", note)
            journal.commit()
            info(logger, "SKIP", "leg skipped", cid=cid, symbol=leg.symbol, reason=note)
            continue
        journal.begin()
        journal.set_intent_status(cid, "sent", note)
        if guard is not None:
            # With the send, so that a fill the boot's reconciliation journals (a crash between the exchange's
            # answer and the fill's commit) is still held to the price read before it.
            journal.event(plan.cycle_id, "price_read", client_order_id=cid, symbol=leg.symbol, side=leg.side,
                          price=price)
        journal.commit()
        try:
            order = await place_idempotent(broker, journal, leg, qty, cid, limits, logger, quote_amount)
        except OrderRejectedError as exc:
            journal.begin()
            journal.set_intent_status(cid, "rejected", f"{exc} (code {exc.code})")
            journal.commit()
            result.status = "partial"
            result.reasons.append(f"leg {leg.index} {leg.symbol} rejected (code {exc.code}): {exc}")
            warn(logger, "REJECT", "order rejected by the exchange", cid=cid, symbol=leg.symbol, code=exc.code,
                 error=str(exc))
            continue
        assert order is not None
        await _finish_order(broker, journal, plan, leg, cid, order, note, limits, result, logger, guard, price,
                            rules.get(leg.symbol))
    return result


def _skip(journal: Journal, result: ExecutionResult, leg: PlanLeg, cid: str, reason: str) -> None:
    journal.begin()
    journal.set_intent_status(cid, "skipped", reason)
    journal.commit()
    result.status = "partial"
    result.reasons.append(f"leg {leg.index} {leg.symbol}: {reason}")


def _price_read(journal: Journal, plan: PlanBody, cid: str) -> float:
    """The exchange price a live leg was last sent against, as journaled with its send (0.0: none)."""
    event = journal.order_event(plan.cycle_id, "price_read", cid)
    return float(event["price"]) if event else 0.0


def _judge_fill_journaled_elsewhere(journal: Journal, plan: PlanBody, leg: PlanLeg, cid: str, guard: LiveGuard,
                                    result: ExecutionResult, logger: logging.Logger) -> None:
    """A leg already final when the plan (re)runs: if the boot's reconciliation journaled its fill (the process died
    between the exchange's answer and the fill's commit), the fill was never held to the price read before it.
    Judged now, before any later buy, unless that was done (a ``fill_judged`` event) or nothing was read."""
    price_read = _price_read(journal, plan, cid)
    if not price_read > 0 or journal.order_event(plan.cycle_id, "fill_judged", cid) is not None:
        return
    filled_qty, avg_price = journal.order_fill(cid)
    journal.begin()
    slipped = _stop_buys_if_slipped(journal, plan, leg, cid, price_read, filled_qty, avg_price, guard, result)
    journal.commit()
    if slipped:
        warn(logger, "PRICE_GUARD", "fill journaled at boot slipped past the guard; no further buys in this plan",
             cid=cid, symbol=leg.symbol, side=leg.side, price_read=price_read, avg_price=avg_price, reason=slipped)


def _stop_buys_if_slipped(journal: Journal, plan: PlanBody, leg: PlanLeg, cid: str, price_read: float,
                          filled_qty: float, avg_price: float, guard: LiveGuard, result: ExecutionResult) -> str:
    """Inside the transaction that journals a live order as final: if it filled much worse than the price read just
    before it, every later buy of the plan not yet sent is journaled skipped, so no run of the plan buys on into
    that book, a redelivery or a restart's included (live_guard.py says why).  Returns why ("" if it did not
    slip)."""
    slipped = fill_slippage(leg.side, price_read, avg_price)
    # Judged once, whatever the verdict: a later run (a redelivery, a restart) does not judge it again.
    journal.event(plan.cycle_id, "fill_judged", client_order_id=cid, slippage=round(slipped, 6))
    if filled_qty <= 0 or slipped <= guard.max_price_deviation:
        return ""
    why = (f"price guard: leg {leg.index} {leg.symbol} filled {slipped:.1%} worse than the "
           f"{'ask' if leg.side == 'buy' else 'bid'} read before it ({avg_price:.8g} vs {price_read:.8g}; "
           f"limit {guard.max_price_deviation:.1%}): no further buys in this plan")
    journal.event(plan.cycle_id, "fill_slippage", client_order_id=cid, symbol=leg.symbol, side=leg.side,
                  price_read=price_read, avg_price=avg_price, slippage=round(slipped, 6))
    for later in plan.legs:
        later_cid = client_order_id(plan.plan_id, later.index)
        # Only buys never sent: one a restart left open ("sent", "acked") may be on the exchange, and is looked up
        # and finished in its turn (journaled skipped, its fills would never be).
        if later.index > leg.index and later.side == "buy" and \
                journal.intent_state(later_cid)[0] in ("pending", "unsent"):
            journal.set_intent_status(later_cid, "skipped", why)
            result.reasons.append(f"leg {later.index} {later.symbol}: {why}")
    result.status = "partial"
    return why


async def _finish_order(broker: Broker, journal: Journal, plan: PlanBody, leg: PlanLeg, cid: str,
                        order: OrderState, note: str, limits: ExecutionLimits, result: ExecutionResult,
                        logger: logging.Logger, guard: LiveGuard | None = None, price_read: float = 0.0,
                        rule: MarketRule | None = None) -> None:
    """Wait for the order to be final (cancelling the rest after the timeout), then journal it and its fills.
    ``price_read`` (a new live leg): the price read before it was sent, which its fill is held to; ``rule``: the
    pair's, whose largest order may have cut the leg."""
    order = await wait_final(broker, order, cid, limits)
    if not order.is_final:
        # Still working after its cancel (the exchange has not answered it as done): journaled as a final
        # status, the intent would leave the open set and fills that come later would never be journaled.  Its
        # fills so far are journaled, the intent stays open ("acked"), and the plan is retried: the restart path
        # looks the order up again, as the boot's reconciliation does.
        journal.begin()
        new = journal_order(journal, plan.cycle_id, order, result, cid)
        journal.set_intent_status(cid, "acked", f"still {order.status} after its cancel")
        journal.commit()
        spend(guard, new)
        raise TransientBrokerError(f"order {cid} ({order.symbol}) still {order.status} after its cancel; "
                                   "looked up again when the plan is retried")
    final = final_status(order)
    journal.begin()
    new = journal_order(journal, plan.cycle_id, order, result, cid)
    journal.set_intent_status(cid, final, note)
    slipped = _stop_buys_if_slipped(journal, plan, leg, cid, price_read, order.filled_qty, order.avg_price, guard,
                                    result) if guard is not None and price_read > 0 else ""
    journal.commit()
    spend(guard, new)
    if slipped:
        warn(logger, "PRICE_GUARD", "fill slipped past the guard; no further buys in this plan", cid=cid,
             symbol=leg.symbol, side=leg.side, price_read=price_read, avg_price=order.avg_price, reason=slipped)
    if final != "filled":
        result.status = "partial"
        result.reasons.append(f"leg {leg.index} {leg.symbol}: {final} {order.filled_qty}/{order.qty} "
                              f"(exchange status {order.status})")
    elif not cut_by_reason(note) and cut_short(leg, order.filled_qty, rule, limits,
                                                              price_read or leg.ref_price):
        result.status = "partial"  # found after a restart: the cut's note was not journaled with it
        result.reasons.append(f"leg {leg.index} {leg.symbol}: filled {order.filled_qty} of {leg.qty}, cut by "
                              f"{CAPPED}={limits.max_order_usdt} or the exchange's largest market order")
