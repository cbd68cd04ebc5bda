"""Fill simulation shared by the reference and the fast backtester (numba, so both get the same floats).

Fills happen only on a real bar: a missing candle or a zero-volume candle (no trade took place) fills
nothing and the leg is dropped; the next cycle plans again.  Slippage moves the price against the trader,
the fee is charged in USDT on the traded notional.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aura.strategy.rebalance import floor_to_step_nb


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
