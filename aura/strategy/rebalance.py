"""Turn target weights into a rebalance plan that respects lot steps and minimum notional.

The arithmetic lives in ``rebalance_core`` (numba, arrays in symbol-name order), which the fast backtest
kernel calls as well; ``rebalance_plan`` is the dict-based entry point the services use.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aura.strategy.types import Leg, MarketRule

BUY = 1
SELL = -1
# Leg reasons by code (the arrays carry the code, Leg carries the name).
R_ENTER, R_ADD, R_TRIM, R_EXIT, R_STOP_LOSS, R_TAKE_PROFIT, R_KILL_SWITCH, R_DATA_END = range(8)
REASONS = ("enter", "add", "trim", "exit", "stop_loss", "take_profit", "kill_switch", "data_end")
# The exits that are the loss limit itself: a venue guard that holds them back in a fast market keeps the position
# exactly when it must go (services/executor/execution.py sends them through its price guard).
PROTECTIVE_EXITS = ("stop_loss", "kill_switch")


@njit(cache=True)
def step_decimals(step: float) -> tuple[float, float]:
    """(scale, step in units of 1/scale) for a decimal lot step, e.g. 0.001 -> (1e5, 100.0); (0, 0) when the
    step is not a short decimal.  Precomputed per symbol by the planners; it only depends on the step."""
    if not 0 < step < 1:
        return 0.0, 0.0
    digits = math.ceil(-math.log10(step) - 1e-9) + 2
    scale = 10.0**digits
    step_units = round(step * scale)
    if abs(step * scale - step_units) > 1e-6:
        return 0.0, 0.0
    return scale, float(step_units)


@njit(cache=True)
def floor_units(qty: float, step: float, scale: float, step_units: float) -> float:
    """``qty`` rounded down to a multiple of ``step`` (with ``step_decimals(step)`` precomputed)."""
    if step <= 0:
        return qty
    # The epsilon absorbs binary noise such as 0.3/0.1 = 2.9999999999999996.  It is relative as well: a
    # holding summed from many fills (27258.128036 XRP = 2.7e10 lots of 1e-6) carries noise of ~1e-5 lots,
    # and flooring it one lot short would leave a phantom one-lot position behind after a full exit.
    x = qty / step
    units = math.floor(x + max(1e-9, 1e-13 * x))
    if scale == 0.0 or units * step_units > 2.0**52:
        return units * step
    # The float nearest to the decimal units * step (0.3, not 0.30000000000000004): an exact integer divided
    # by an exact power of ten is correctly rounded.
    return (units * step_units) / scale


@njit(cache=True)
def floor_to_step_nb(qty: float, step: float) -> float:
    scale, step_units = step_decimals(step)
    return floor_units(qty, step, scale, step_units)


def floor_to_step(qty: float, step: float) -> float:
    return float(floor_to_step_nb(float(qty), float(step)))


@njit(cache=True, inline="always")
def rebalance_core(m: int, weights: np.ndarray, holdings: np.ndarray, cash: float, price: np.ndarray,
                   has_rule: np.ndarray, step: np.ndarray, step_scale: np.ndarray, step_units: np.ndarray,
                   min_qty: np.ndarray, min_notional: np.ndarray,
                   fee_rate: float, min_trade_usdt: float, out_sym: np.ndarray, out_side: np.ndarray,
                   out_qty: np.ndarray, out_px: np.ndarray, out_reason: np.ndarray, start: int,
                   exit_reason: int) -> int:
    """Append legs at ``start`` of the out arrays; returns the new leg count.  See ``rebalance_plan``.
    Only the first ``m`` entries of the input arrays are read."""
    equity = cash
    for j in range(m):
        if holdings[j] != 0 and price[j] > 0:
            equity += holdings[j] * price[j]
    n = start
    cash_after = cash
    for j in range(m):  # sells
        if weights[j] == 0.0 and holdings[j] == 0.0:
            continue
        p = price[j]
        if not p > 0 or not has_rule[j]:
            continue
        current = holdings[j]
        delta = weights[j] * equity / p - current
        if delta < 0:
            full_exit = weights[j] == 0.0
            qty = floor_units(current if full_exit else -delta, step[j], step_scale[j], step_units[j])
            qty = min(qty, floor_units(current, step[j], step_scale[j], step_units[j]))
            floor_notional = min_notional[j] if full_exit else max(min_notional[j], min_trade_usdt)
            if qty >= min_qty[j] and qty * p >= floor_notional:
                out_sym[n] = j
                out_side[n] = SELL
                out_qty[n] = qty
                out_px[n] = p
                out_reason[n] = exit_reason if full_exit else R_TRIM
                cash_after += qty * p * (1 - fee_rate)
                n += 1
    first_buy = n
    need = 0.0
    for j in range(m):  # buys, before fitting them into the cash
        if weights[j] == 0.0:
            continue
        p = price[j]
        if not p > 0 or not has_rule[j]:
            continue
        delta = weights[j] * equity / p - holdings[j]
        if delta > 0:
            qty = floor_units(delta, step[j], step_scale[j], step_units[j])
            out_sym[n] = j
            out_side[n] = BUY
            out_qty[n] = qty
            out_px[n] = p
            out_reason[n] = R_ENTER if holdings[j] == 0 else R_ADD
            need += qty * p * (1 + fee_rate)
            n += 1
    # Buys are scaled so that they fit in the cash available after the sells, fees included.
    scale = min(1.0, cash_after / need) if need > 0 else 1.0
    kept = first_buy
    for b in range(first_buy, n):
        j = out_sym[b]
        qty = floor_units(out_qty[b] * scale, step[j], step_scale[j], step_units[j])
        if qty >= min_qty[j] and qty * out_px[b] >= max(min_notional[j], min_trade_usdt):
            out_sym[kept] = j
            out_side[kept] = BUY
            out_qty[kept] = qty
            out_px[kept] = out_px[b]
            out_reason[kept] = out_reason[b]
            kept += 1
    return kept


class LegBuffer:
    """Preallocated output arrays for the numba planners."""

    def __init__(self, size: int) -> None:
        self.sym = np.zeros(size, dtype=np.int64)
        self.side = np.zeros(size, dtype=np.int64)
        self.qty = np.zeros(size)
        self.px = np.zeros(size)
        self.reason = np.zeros(size, dtype=np.int64)

    def legs(self, symbols: list[str], count: int) -> list[Leg]:
        return [Leg(symbols[int(self.sym[i])], "buy" if self.side[i] == BUY else "sell", float(self.qty[i]),
                    float(self.px[i]), REASONS[int(self.reason[i])]) for i in range(count)]


def rule_arrays(symbols: list[str] | tuple[str, ...], rules: dict[str, MarketRule]) -> tuple[np.ndarray, ...]:
    """(has_rule, step, step_scale, step_units, min_qty, min_notional) per symbol, in the given order."""
    has = np.array([s in rules for s in symbols], dtype=np.bool_)
    step = np.array([rules[s].step_size if s in rules else 0.0 for s in symbols], dtype=np.float64)
    decimals = [step_decimals(float(x)) for x in step]
    scale = np.array([d[0] for d in decimals], dtype=np.float64)
    units = np.array([d[1] for d in decimals], dtype=np.float64)
    min_qty = np.array([rules[s].min_qty if s in rules else 0.0 for s in symbols], dtype=np.float64)
    min_notional = np.array([rules[s].min_notional if s in rules else 0.0 for s in symbols], dtype=np.float64)
    return has, step, scale, units, min_qty, min_notional


def price_array(symbols: list[str], prices: dict[str, float]) -> np.ndarray:
    return np.array([float(prices.get(s, math.nan)) for s in symbols], dtype=np.float64)


def rebalance_plan(
    weights: dict[str, float],
    holdings: dict[str, float],
    cash: float,
    prices: dict[str, float],
    rules: dict[str, MarketRule],
    fee_rate: float,
    min_trade_usdt: float,
) -> list[Leg]:
    """Sells first (they free cash), then buys, each sorted by symbol; every quantity is lot-rounded.

    A symbol held but without a usable price is left alone (never sold blind); a leg below the exchange's
    minimum notional or ``min_trade_usdt`` is dropped rather than sent to be rejected (a full exit only has
    to clear the exchange minimum: a small remainder is still worth closing).
    """
    symbols = sorted(set(weights) | set(holdings))
    w = np.array([float(weights.get(s, 0.0)) for s in symbols], dtype=np.float64)
    h = np.array([float(holdings.get(s, 0.0)) for s in symbols], dtype=np.float64)
    has, step, scale, units, min_qty, min_notional = rule_arrays(symbols, rules)
    buf = LegBuffer(max(1, len(symbols)))
    n = rebalance_core(len(symbols), w, h, float(cash), price_array(symbols, prices), has, step, scale, units,
                       min_qty, min_notional, float(fee_rate), float(min_trade_usdt), buf.sym, buf.side, buf.qty,
                       buf.px, buf.reason, 0, R_EXIT)
    return buf.legs(symbols, n)
