"""Capacity: no leg may be more than ``max_participation`` of the volume its market trades in one bar.

Measured in base units (the leg's quantity against the bar's base volume): the same share as the leg's notional
against the bar's quote volume, up to the difference between the leg's price and the bar's average price, and
free of it: a candle's base volume is exact, its quote volume a sum the data does not always carry.

One rule, two places it is applied, because they know different bars:

* the backtest (``aura.backtest.execution.fill_leg``) caps each leg against the volume of the bar it fills in,
  which history tells it;
* live risk (``pipeline.risk_plan`` with ``volumes``) cannot know the volume of the bar its orders will fill
  in, so it caps against the bar the plan was decided on, the last closed one: the best estimate there is,
  and the one a trader would look at.

A capped leg is cut to the cap, lot-floored, and dropped whole when the cut falls below the exchange's
minimums (a smaller order than the plan's is a new order, and the exchange would refuse that one); what is
cut is not carried over: the next cycle plans again from what was filled, as after a partial fill.
"""

from __future__ import annotations

import math
from dataclasses import replace

from numba import njit

from aura.strategy.rebalance import floor_to_step, floor_to_step_nb
from aura.strategy.types import Leg, MarketRule, Panel

DEFAULT_MAX_PARTICIPATION = 0.10  # the backtest's default and risk's (shared/config.py max_participation)


@njit(cache=True, inline="always")
def participation_cap(qty: float, volume: float, max_part: float, step: float, min_qty: float,
                      min_notional: float, price: float) -> float:
    """The part of ``qty`` that may be sent against a bar that traded ``volume`` (base units): all of it
    within ``max_part`` of the volume, else that share lot-floored, 0 when the cut is below the minimums.
    A NaN volume caps nothing here: the callers decide what an unknown volume means."""
    room = max_part * volume
    if not qty > room:
        return qty
    cut = floor_to_step_nb(room, step)
    if cut <= 0 or cut < min_qty or cut * price < min_notional:
        return 0.0
    return cut


def cap_legs(legs: list[Leg], volumes: dict[str, float], max_participation: float,
             rules: dict[str, MarketRule], sent: dict[tuple[str, str], float] | None = None,
             ) -> tuple[list[Leg], list[str]]:
    """(the legs the cap leaves, in their order, and a reason for every leg it cut or dropped).

    ``volumes``: each symbol's base volume in the decision bar.  A symbol with no finite volume there (a gap
    in the data) is not capped, and the reasons say so; a volume of 0 (no trade in the bar: a halted market)
    caps the leg to nothing.  ``max_participation`` of ``inf`` caps nothing.  ``sent``: what earlier plans on
    the same decision bar already sent, per (symbol, side) (live risk plans again between cycles, on its ticks):
    the cap is on the bar, so it is taken off the room; per side, so a buy never uses up the room of the exit
    that may have to follow it.

    Sells first: the planner sized the buys on the cash the sells bring, so when a sell is cut the buys are cut
    by what it will not bring (lot-floored, dropped below the exchange minimums) before they are capped.  That
    is conservative where the cash alone would have paid for them: the next cycle buys what this one left.
    """
    if not max_participation > 0:
        raise ValueError(f"max_participation must be > 0 (inf: no cap), not {max_participation!r}")
    if math.isinf(max_participation):
        return list(legs), []
    reasons: list[str] = []
    sized: dict[int, float] = {}
    missing = 0.0  # notional the cut sells will not bring
    for i, leg in enumerate(legs):
        if leg.side == "sell":
            sized[i] = _capped(leg, leg.qty, volumes, max_participation, rules, sent, reasons)
            missing += (leg.qty - sized[i]) * leg.ref_price
    buys = [i for i, leg in enumerate(legs) if leg.side != "sell"]
    total = sum(legs[i].qty * legs[i].ref_price for i in buys)
    keep = max(0.0, total - missing) / total if missing > 0 and total > 0 else 1.0
    for i in buys:
        leg = legs[i]
        qty = leg.qty
        if keep < 1.0:
            step, min_qty, min_notional = _rule(rules, leg.symbol)
            qty = floor_to_step(leg.qty * keep, step)
            if qty <= 0 or qty < min_qty or qty * leg.ref_price < min_notional:
                qty = 0.0
            reasons.append(f"participation cap: {leg.symbol} buy " + (
                f"cut from {leg.qty:.8g} to {qty:.8g}" if qty > 0 else f"of {leg.qty:.8g} dropped") +
                f": the sells that were to pay for it bring {missing:.8g} less")
        sized[i] = _capped(leg, qty, volumes, max_participation, rules, sent, reasons) if qty > 0 else 0.0
    kept = [leg if sized[i] == leg.qty else replace(leg, qty=sized[i]) for i, leg in enumerate(legs) if sized[i] > 0]
    return kept, reasons


def _rule(rules: dict[str, MarketRule], symbol: str) -> tuple[float, float, float]:
    rule = rules.get(symbol)
    return (rule.step_size, rule.min_qty, rule.min_notional) if rule else (0.0, 0.0, 0.0)


def _capped(leg: Leg, qty: float, volumes: dict[str, float], max_participation: float,
            rules: dict[str, MarketRule], sent: dict[tuple[str, str], float] | None, reasons: list[str]) -> float:
    """``qty`` of ``leg`` after the cap on its bar's volume (a reason appended when it cuts)."""
    volume = float(volumes.get(leg.symbol, math.nan))
    if not math.isfinite(volume):
        reasons.append(f"participation cap: {leg.symbol} has no volume in the decision bar; {leg.side} of "
                       f"{qty:.8g} not capped")
        return qty
    step, min_qty, min_notional = _rule(rules, leg.symbol)
    used = float((sent or {}).get((leg.symbol, leg.side), 0.0))
    capped = float(participation_cap(qty, volume - used / max_participation, max_participation, step, min_qty,
                                     min_notional, leg.ref_price))
    if capped == qty:
        return qty
    limit = f"{max_participation:.3g} of the decision bar's volume {volume:.8g}" + (
        f", {used:.8g} of it sent already" if used else "")
    if capped > 0:
        reasons.append(f"participation cap: {leg.symbol} {leg.side} cut from {qty:.8g} to {capped:.8g} ({limit})")
    else:
        reasons.append(f"participation cap: {leg.symbol} {leg.side} of {qty:.8g} dropped ({limit} is below the "
                       "exchange minimums)")
    return capped


def decision_bar_volumes(panel: Panel, row: int = -1) -> dict[str, float]:
    """Each symbol's base volume in bar ``row`` of the panel, by default its last (NaN where it has no candle)."""
    if len(panel.timestamps) == 0:
        return {}
    return {s: float(v) for s, v in zip(panel.symbols, panel.volume[row], strict=True)}
