"""How much of a leg may be sent: held coins, the per-order cap and the exchange's minimums.  Pure, so the paper
and live paths and a restart's reconciliation judge a leg the same way."""

from __future__ import annotations

import math

from aura.strategy.rebalance import PROTECTIVE_EXITS, floor_to_step
from aura.strategy.types import MarketRule
from services.executor.exchange_calls import ExecutionLimits
from shared.contracts import PlanLeg

CAPPED = "capped at max_order_usdt"  # the reason clamp_leg gives when the cap cut the leg
MAX_QTY = "cut to the exchange's largest market order"  # ... when the venue's maxQty did
NO_QUOTE_BUYS = "not bought: the venue takes no quote-amount market buys"  # execute_plan's skip of such a buy
# How the skips that leave a plan "executed" begin: a leg too small to trade, or with no rules (clamp_leg), or a
# buy whose budget fills less than the minimum (live_guard.buy_budget).  Every other skip makes it partial.
TOO_SMALL_SKIPS = ("no market rules for", "below exchange minimum", "buy of ")


def cut_by_reason(reason: str) -> bool:
    """Whether a leg's reason says it was cut short of its plan (the cap, the venue's largest order, no
    quote-amount buys): the plan is then partial, in the run that cut it and after a restart alike."""
    return reason.startswith((CAPPED, MAX_QTY)) or NO_QUOTE_BUYS in reason


def capped(leg: PlanLeg, qty: float, limits: ExecutionLimits, price: float) -> bool:
    """Whether ``max_order_usdt`` (the most one order may spend) cuts ``qty`` of this leg at ``price``.  A stop-loss
    or kill-switch exit is never cut: it spends nothing, is bounded by the holding, and what it leaves open is
    exactly the exposure it exists to close (its price guard is overridden for the same reason)."""
    return not (leg.side == "sell" and leg.reason in PROTECTIVE_EXITS) and qty * price > limits.max_order_usdt


def largest_order(rule: MarketRule, limits: ExecutionLimits) -> float:
    """The largest quantity sent in one market order: the venue's maxQty less a margin, since a quote-amount buy's
    quantity is the exchange's to compute at its own price (inf: the venue states none)."""
    largest = rule.max_qty / (1.0 + limits.min_notional_margin)
    return floor_to_step(largest, rule.step_size) if math.isfinite(largest) else math.inf


def cut_short(leg: PlanLeg, filled_qty: float, rule: MarketRule | None, limits: ExecutionLimits,
              price: float) -> bool:
    """Whether a leg that filled ``filled_qty`` fell short of its plan because the per-order cap or the venue's
    largest order cut it (judged from the leg itself, for a leg whose journaled reason a restart overwrote: the
    boot's reconciliation, an order found)."""
    if filled_qty >= leg.qty * (1.0 - 1e-9):
        return False
    return capped(leg, leg.qty, limits, price) or (rule is not None and leg.qty > largest_order(rule, limits))


def clamp_leg(leg: PlanLeg, rule: MarketRule | None, free_base: float | None,
              limits: ExecutionLimits, price: float | None = None) -> tuple[float, str]:
    """(qty to send, reason). qty 0 means skip with that reason. Pure.  ``price``: what the notional is
    checked at (live: the exchange's; paper: the plan's reference)."""
    if rule is None:
        return 0.0, f"no market rules for {leg.symbol}"
    px = leg.ref_price if price is None else price
    qty = leg.qty
    reason = ""
    if leg.side == "sell" and free_base is not None and qty > free_base:
        qty = floor_to_step(free_base, rule.step_size)
        reason = f"sell clamped to free balance {free_base}"
    if capped(leg, qty, limits, px):  # after the clamp to what is held: never raised back above it
        qty = min(qty, floor_to_step(limits.max_order_usdt / px, rule.step_size))
        reason = f"{CAPPED}={limits.max_order_usdt}"
    # The exchange's largest market order, stop-loss and kill-switch exits included: one beyond it is refused every
    # time, so the exit goes out in pieces (the rest at the next plan or tick) rather than never.  With a margin,
    # since a quote-amount buy's quantity is the exchange's to compute at its own price.
    if qty > (largest := largest_order(rule, limits)):
        qty = largest
        reason = f"{MAX_QTY} {rule.max_qty:g}"
    qty = floor_to_step(qty, rule.step_size)
    # The exchange checks the notional at *its* price: keep a margin so a small move since the price read
    # turns a borderline leg into a logged skip here, never into a NOTIONAL rejection there.
    floor = rule.min_notional * (1.0 + limits.min_notional_margin)
    if qty < rule.min_qty or qty * px < floor:
        return 0.0, (f"below exchange minimum (qty {qty} vs min {rule.min_qty}, notional "
                     f"{qty * px:.2f} vs min {rule.min_notional} + {limits.min_notional_margin:.0%})")
    return qty, reason
