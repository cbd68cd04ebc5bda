"""Live only: what the exchange's own prices and the journal's cash let one plan spend, and when it stops buying.

The plan's prices are risk's reference, not the market.  Before each new leg the exchange's ticker is read: a
leg is refused ([PRICE_GUARD]) when the book is wider than ``max_spread`` (a market order would pay the spread and
more) or when its reference is more than ``max_price_deviation`` from the price its market order meets first (the
ask for a buy, the bid for a sell).  The caps (``max_order_usdt``, min notional) are checked at that price.  Buys
spend a quote amount (``quoteOrderQty``), never more than the journal's free cash when the plan started plus what
its sells brought in.

A market order has no price limit: one larger than what rests at the top of the book walks it.  So after each fill
the average price is compared with the price read just before: a buy that paid, or a sell that received, more than
``max_price_deviation`` worse stops the plan's further buys ([PRICE_GUARD] "fill slipped", journaled
``fill_slippage`` with the remaining buys skipped in the same transaction, so a redelivery or a restart does not
buy them either; the price read is journaled with the send, so a fill that a crash leaves to the boot's
reconciliation is judged when the plan resumes): the book is thinner or moving faster than the plan assumed,
and buying on into it would pay the same again.  Sells go on (they reduce exposure; stop-loss and kill-switch
exits must).  That bounds a thin book's cost to one leg (at most ``max_order_usdt``), not to nothing; a limit
order at a bounded price would, and Binance offers no quote-amount limit order.
"""

from __future__ import annotations

from dataclasses import dataclass

from aura.strategy.rebalance import floor_to_step
from aura.strategy.types import MarketRule
from services.executor.brokers.base import Fill, Quote
from services.executor.exchange_calls import ExecutionLimits
from shared.contracts import PlanLeg


@dataclass
class LiveGuard:
    """One plan's live limits (the module says what each does).  ``cash``: the journal's free cash when the plan
    started, plus what its sells brought in."""

    max_price_deviation: float
    max_spread: float
    cash: float
    fee_rate: float = 0.001  # kept back from each buy's budget for a fee charged in the quote asset


def price_refusal(leg: PlanLeg, quote: Quote, max_deviation: float, max_spread: float) -> str:
    """Why a leg must not trade against the exchange's ``quote`` ("" if it may). Pure."""
    if not quote.last > 0:
        return f"price guard: the exchange gives no price for {leg.symbol}"
    if quote.spread > max_spread:
        book = "no two-sided book" if quote.spread == float("inf") else f"a spread of {quote.spread:.2%}"
        return (f"price guard: {leg.symbol} shows {book} (bid {quote.bid:.8g}, ask {quote.ask:.8g}; "
                f"limit {max_spread:.2%}): a market order would trade far from the price")
    price = quote.side_price(leg.side)
    deviation = abs(leg.ref_price / price - 1.0)
    if deviation > max_deviation:
        return (f"price guard: plan price {leg.ref_price:.8g} is {deviation:.1%} away from the exchange's "
                f"{'ask' if leg.side == 'buy' else 'bid'} {price:.8g} (limit {max_deviation:.1%})")
    return ""


def buy_budget(qty: float, price: float, rule: MarketRule, limits: ExecutionLimits, guard: LiveGuard,
               ) -> tuple[float, str]:
    """(quote amount to spend, reason); 0 means skip.  The notional at the exchange's price, capped by
    ``max_order_usdt`` and by the plan's cash left (less the fee).  Pure."""
    budget = min(qty * price, limits.max_order_usdt, guard.cash / (1.0 + guard.fee_rate))
    reason = "" if budget >= qty * price else f"buy limited to {budget:.2f} quote (cap or the journal's free cash)"
    # The minimum is checked on what the venue will fill, not on the budget: the amount sent is cut to the
    # quote precision (ccxt truncates) and the venue floors amount / price to the lot step, so a budget of
    # exactly qty * price buys a step less, and near the minimum that is a NOTIONAL rejection there.
    fills = floor_to_step(floor_to_step(budget, rule.tick_size) / price, rule.step_size) * price
    floor = rule.min_notional * (1.0 + limits.min_notional_margin)
    if fills < floor or floor_to_step(budget / price, rule.step_size) < rule.min_qty:
        return 0.0, (f"buy of {budget:.2f} quote fills {fills:.2f} at {price:.8g}, less than the minimum notional "
                     f"{rule.min_notional} + {limits.min_notional_margin:.0%} (cash left {guard.cash:.2f})")
    return budget, reason


def spend(guard: LiveGuard | None, new: list[Fill]) -> None:
    """What an order took from (buy) or gave to (sell) the plan's cash: its fills journaled now only.  The
    guard's cash started as the journal's, which already holds the fills journaled before (an order found
    working at boot has its fills so far journaled by the reconciliation): counted twice, a resumed sell's
    proceeds would let the plan's buys spend cash the journal does not have."""
    if guard is None:
        return
    for f in new:
        notional = f.qty * f.price
        guard.cash += (notional if f.side == "sell" else -notional) - f.fee_quote


def fill_slippage(side: str, price_read: float, avg_price: float) -> float:
    """How much worse than ``price_read`` the order filled on average (a fraction; <= 0: as good or better)."""
    if not price_read > 0 or not avg_price > 0:
        return 0.0
    return avg_price / price_read - 1.0 if side == "buy" else 1.0 - avg_price / price_read
