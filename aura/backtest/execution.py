"""Fill simulation shared by the reference and the fast backtester (numba, so both get the same floats).

Fills happen only on a real bar: a missing candle or a zero-volume candle (no trade took place) fills
nothing and the leg is dropped; the next cycle plans again.  Slippage moves the price against the trader,
the fee is charged in USDT on the traded notional.

Capacity (``fill_leg``): a leg fills at most ``max_participation`` of the volume traded in the bar it fills
in (``aura.strategy.capacity``: live risk applies the same rule to the bar it decides on); the rest is
dropped (counted by the engines; the next cycle plans again from what was filled).  Its
*participation* is its quantity over the bar's traded quantity, which is its notional over the bar's quote
volume when both are valued at one price (the candles carry base volume; the bar's VWAP is not known).

Impact: the slippage of a fill grows with the square root of its participation,

    slippage = base_slippage + impact_coefficient * sqrt(participation),

the square-root law of market impact, I = Y * sigma * sqrt(Q / V) for an order of Q against a volume V
traded over the period whose volatility is sigma, with Y of order one wherever it was measured (Toth et al.,
"Anomalous price impact and the critical nature of liquidity", PRX 2011; Bouchaud, Bonart, Donier, Gould,
"Trades, Quotes and Prices", 2018; on BTC/USD, over four decades of Q/V: Donier and Bonart, "A million
metaorder analysis of market impact on the Bitcoin", 2015).  So ``impact_coefficient`` is Y * sigma of one
bar.  The default (``default_impact``) takes Y = 0.5, a moderate "order one" (a choice, not a measurement on
these markets: a result worth promoting should survive a doubled coefficient), and sigma = 6% a day, the
median daily log-return volatility of the 41 bundled symbols (BTC alone: 3.8%), which gives 0.03 for daily
bars; for other bars sigma scales with the square root of their length (1h: 0.0061), so an order of a given
size costs the same whichever bar it is measured against.  At the 10% cap that is 0.95% on top of the base
slippage; at 0.03% of a day's volume (3,000 USDT of a 10M USDT coin), 0.05%.
The base slippage stands for the half spread, which the law leaves out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aura.strategy.capacity import DEFAULT_MAX_PARTICIPATION, participation_cap
from aura.strategy.rebalance import floor_to_step_nb

DAY_MS = 86_400_000
IMPACT_Y = 0.5  # the square-root law's constant (see the module docstring)
IMPACT_DAILY_SIGMA = 0.06  # median daily volatility of the bundled universe


__all__ = ["DEFAULT_MAX_PARTICIPATION", "default_impact", "fill_leg"]


def default_impact(bar_ms: int) -> float:
    """Y * sigma of one bar: the impact coefficient for bars of ``bar_ms``."""
    return IMPACT_Y * IMPACT_DAILY_SIGMA * math.sqrt(bar_ms / DAY_MS)


@njit(cache=True)
def tradable(price: float, volume: float) -> bool:
    return price > 0 and volume > 0


@njit(cache=True)
def sell_fill(qty: float, ref_price: float, slippage: float, fee_rate: float) -> tuple[float, float, float]:
    """(execution price, cash received, fee paid)."""
    px = ref_price * (1.0 - slippage)
    gross = qty * px
    fee = gross * fee_rate
    return px, gross - fee, fee


@njit(cache=True)
def buy_fill(qty: float, ref_price: float, slippage: float, fee_rate: float, cash: float, step: float,
             min_qty: float, min_notional: float) -> tuple[float, float, float, float]:
    """(quantity filled, execution price, cash spent, fee paid).

    The plan was sized on the decision price; if the fill price makes it unaffordable the quantity is cut to
    what the cash buys (lot-rounded), and dropped (0) if that falls below the exchange minimums.
    """
    px = ref_price * (1.0 + slippage)
    gross = qty * px
    fee = gross * fee_rate
    if gross + fee > cash:
        qty = floor_to_step_nb(cash / (px * (1.0 + fee_rate)), step)
        gross = qty * px
        fee = gross * fee_rate
        if gross + fee > cash and step > 0:  # the floor's noise tolerance rounded up: one lot less
            qty = floor_to_step_nb(qty - step, step)
            gross = qty * px
            fee = gross * fee_rate
        if qty < min_qty or gross < min_notional or qty <= 0 or gross + fee > cash:
            return 0.0, px, 0.0, 0.0
    return qty, px, gross + fee, fee


@njit(cache=True)
def average_entry(held: float, entry: float, qty: float, px: float) -> float:
    if held > 0 and entry > 0:
        return (held * entry + qty * px) / (held + qty)
    return px


@njit(cache=True)
def remaining_after_sell(held: float, qty: float, step: float) -> float:
    """What is left after a sell; float noise below half a lot step is treated as nothing left."""
    rest = held - qty
    dust = 0.5 * step if step > 0 else 1e-12
    return 0.0 if rest < dust else rest


@njit(cache=True)
def mark_row(close_row: np.ndarray, mark: np.ndarray) -> None:
    """Update the valuation marks with the bar's closes (a missing close keeps the last known one)."""
    for j in range(close_row.shape[0]):
        if close_row[j] > 0:
            mark[j] = close_row[j]


@njit(cache=True, inline="always")
def impact_slippage(qty: float, volume: float, base: float, impact: float) -> float:
    """Base slippage plus square-root impact for ``qty`` against a bar that traded ``volume``.  Participation
    is clipped at 1 (the law is not measured beyond a bar's whole volume) and a bar without volume counts as 1:
    only a forced exit (``data_end``) can reach either, every leg is capped first."""
    part = qty / volume if volume > 0 else 1.0
    return base + impact * math.sqrt(min(1.0, part))


@njit(cache=True, inline="always")
def fill_leg(side: int, qty: float, held: float, ref_price: float, volume: float, cash: float, step: float,
             min_qty: float, min_notional: float, slippage: float, impact: float, max_part: float,
             fee_rate: float) -> tuple[float, float, float, float, float]:
    """One leg against one bar: (quantity filled, execution price, cash change, fee, quantity the cap dropped).

    A sell is first limited to what is held.  Then the participation cap: a leg larger than ``max_part`` of the
    bar's volume is cut to that, lot-floored, and dropped whole if the cut falls below the exchange minimums (a
    smaller order than the plan's is a new order, and the exchange would refuse it).  A leg the cap leaves
    alone keeps the plan's quantity exactly.  The slippage is priced on the participation of what is sent.
    Filled 0 with nothing dropped: the leg could not fill at all (nothing held, or unaffordable).
    """
    if side < 0:
        qty = min(qty, held)
        if qty <= 0:
            return 0.0, math.nan, 0.0, 0.0, 0.0
    want = qty
    qty = participation_cap(qty, volume, max_part, step, min_qty, min_notional, ref_price)
    if qty <= 0 < want:
        return 0.0, math.nan, 0.0, 0.0, want
    slip = impact_slippage(qty, volume, slippage, impact)
    if side < 0:
        px, proceeds, fee = sell_fill(qty, ref_price, slip, fee_rate)
        return qty, px, proceeds, fee, want - qty
    filled, px, spent, fee = buy_fill(qty, ref_price, slip, fee_rate, cash, step, min_qty, min_notional)
    return filled, px, -spent, fee, want - qty
