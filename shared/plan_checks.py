"""What the executor checks of a plan's shape after its signature verifies, before anything is journaled.

A signature proves who signed, not that the plan is one risk's planner could have made: a compromised risk holds
its key.  The executor bounds spending at the exchange's price (``AURA_MAX_ORDER_USDT`` per order, the journal's
free cash per plan); these checks keep a signed plan from multiplying the per-order cap by listing the same
order many times, or from naming a pair quoted in another currency than the caps and the cash (an ETH/BTC buy
would spend BTC against a cap read as USDT), and from carrying legs no planner makes (rebalance.py and
pipeline.py emit at most one leg per symbol: a stop's sell sets the symbol's weight to zero, so no buy or second
sell follows it; legs are numbered 0..n-1 in order).  Pure.
"""

from __future__ import annotations

import math

import msgspec

from shared.contracts import PlanBody, plan_id_for
from shared.cycles import cycle_id_for, is_tick_cycle
from shared.market_rules import QUOTE, in_account_currency

SIDES = ("buy", "sell")
# One buy or sell per symbol of the universe (at most 100 pairs) and of whatever is held besides: a
# planner's plan is far shorter; a longer one is a flood.
MAX_PLAN_LEGS = 1000


def plan_shape_refusal(plan: PlanBody) -> str:
    """Why the executor must refuse ``plan`` whatever its signature ("" if its shape is one a planner makes)."""
    if len(plan.legs) > MAX_PLAN_LEGS:
        return f"{len(plan.legs)} legs, more than the {MAX_PLAN_LEGS} a plan may have"
    seen: dict[tuple[str, str], int] = {}
    for position, leg in enumerate(plan.legs):
        if leg.index != position:
            return f"leg {position} is numbered {leg.index}: legs are numbered 0..n-1 in order"
        if not in_account_currency(leg.symbol):
            return (f"leg {position} trades {leg.symbol[:40]!r}, not a {QUOTE} pair: every cap and the journal's "
                    f"cash are in {QUOTE}")
        if leg.side not in SIDES:
            return f"leg {position} has side {leg.side[:20]!r}, not buy or sell"
        if not (math.isfinite(leg.qty) and leg.qty > 0):
            return f"leg {position} has quantity {leg.qty!r}: it must be a positive number"
        if not (math.isfinite(leg.ref_price) and leg.ref_price > 0):
            return f"leg {position} has reference price {leg.ref_price!r}: it must be a positive number"
        first = seen.setdefault((leg.symbol, leg.side), position)
        if first != position:
            return (f"legs {first} and {position} both {leg.side} {leg.symbol[:40]!r}: one order per symbol and "
                    "side (listed twice, each would get the whole per-order cap)")
    # The executor keys its journal, its idempotency and its order ids on the plan id: a signed plan that reused
    # the id of another (one still executing) skipped the one-trade-per-cycle, basis and books checks and placed
    # its legs under the other's order ids (found by an audit).  Risk's planner derives the id from the body.
    fields = msgspec.structs.asdict(plan)
    del fields["plan_id"]
    if plan.plan_id != plan_id_for(fields):
        return f"plan id {plan.plan_id[:40]!r} is not the digest of the plan's contents (the planner's plan_id_for)"
    return ""


def plan_cycle_refusal(plan: PlanBody, timeframe: str) -> str:
    """Why the executor must refuse ``plan`` for what it says it is ("" if a planner makes it): a risk tick's exit
    plan (``tick-...``) only sells, and any other plan is a data cycle's, named by its own bar
    (:func:`shared.cycles.cycle_id_for`).  A compromised risk holds the signing key; without this it could sign
    a stream of buy-and-sell plans under fresh ids (each a "new cycle" that trades once), paying fees and spreads
    without end, or a plan under a far-future bar's id that the journal then took for its newest cycle.  With it,
    at most one plan a bar buys (the executor trades a cycle once), and live its bar must have closed."""
    if is_tick_cycle(plan.cycle_id):
        if buys := [leg.index for leg in plan.legs if leg.side == "buy"]:
            return f"risk tick plan {plan.cycle_id[:40]!r} buys (legs {buys[:5]}): a tick only exits"
        return ""
    named = cycle_id_for(timeframe, plan.as_of_ms)
    if plan.cycle_id != named:
        return f"cycle {plan.cycle_id[:40]!r} is neither a risk tick nor the {timeframe} bar its data names ({named})"
    return ""
