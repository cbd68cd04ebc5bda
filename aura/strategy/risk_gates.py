"""Risk gates as pure functions: kill-switch, stop-loss / take-profit, cost-benefit.

Each gate is usable on its own (and tested on its own); ``pipeline.risk_plan`` chains them in the order the
design fixes.  The array versions are numba functions because the fast backtest kernel calls them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from aura.strategy.params import StrategyParams

NO_STOP = 0
STOP_LOSS = 1
TAKE_PROFIT = 2


@njit(cache=True)
def drawdown_from_peak(last: float, peak: float) -> float:
    return 0.0 if peak <= 0 else max(0.0, 1.0 - last / peak)


def rolling_drawdown(equity: Sequence[float], window: int) -> float:
    """Drawdown of the last equity value from the highest value within the last ``window`` points."""
    if not equity:
        return 0.0
    tail = list(equity[-window:])
    return float(drawdown_from_peak(float(tail[-1]), float(max(tail))))


def kill_switch(equity: Sequence[float], params: StrategyParams) -> bool:
    """True when the rolling drawdown reaches the threshold: liquidate everything (and latch ``halted``)."""
    return rolling_drawdown(equity, params.kill_switch_window) >= params.kill_switch_drawdown


@njit(cache=True, inline="always")
def stop_trigger(entry: float, bar_open: float, bar_high: float, bar_low: float, stop_loss: float,
                 take_profit: float) -> tuple[int, float]:
    """(NO_STOP | STOP_LOSS | TAKE_PROFIT, exit price) for a position entered at ``entry``.

    Backtest: the bar's open/high/low, i.e. a stop order resting at the exchange during the bar; if the bar
    opens beyond the level the exit happens at the open (a gap is not filled at a price never traded).
    Live: all three are the latest price, so the exit price is that price.  When both levels lie inside
    one bar the stop-loss is assumed first: the bar's path is unknown and the pessimistic order is honest.
    """
    if not entry > 0:
        return NO_STOP, math.nan
    if stop_loss > 0:
        level = entry * (1.0 - stop_loss)
        if bar_low <= level:
            return STOP_LOSS, min(bar_open, level)
    if take_profit > 0:
        level = entry * (1.0 + take_profit)
        if bar_high >= level:
            return TAKE_PROFIT, max(bar_open, level)
    return NO_STOP, math.nan


@njit(cache=True, inline="always")
def cost_benefit_adjust(m: int, weights: np.ndarray, holdings: np.ndarray, price: np.ndarray, er: np.ndarray,
                        cash: float, use_er: bool, band: float, margin: float, cost_rate: float,
                        horizon: int, out: np.ndarray) -> tuple[bool, float, float]:
    """Write into ``out`` the weights worth trading to; returns (buys held back, expected gain, cost).

    * Exits (target 0) and trims always pass: a cost gate never stands in the way of reducing risk.
    * A held name whose weight would change by less than ``band`` keeps its current weight.
    * The remaining buys (entries and adds) go ahead together only if their expected gain over ``horizon``
      bars, sum(delta_w * er), covers ``margin`` times their round-trip cost (2 * (fee + slippage) per
      unit of weight); otherwise every name keeps its current weight ("hold").
    ``margin <= 0`` or ``use_er=False`` (no forecasts available) switches the gain test off.
    Only the first ``m`` entries are read and written.
    """
    equity = cash
    for j in range(m):
        if holdings[j] != 0 and price[j] > 0:
            equity += holdings[j] * price[j]
    gain = 0.0
    cost = 0.0
    for j in range(m):
        out[j] = weights[j]
        if weights[j] == 0.0 or not price[j] > 0 or not equity > 0:
            continue
        cur = holdings[j] * price[j] / equity if holdings[j] != 0 else 0.0
        d = weights[j] - cur
        if cur > 0 and abs(d) < band:
            out[j] = cur
        elif d > 0:
            gain += d * er[j] * horizon
            cost += d * 2.0 * cost_rate
    if use_er and margin > 0 and cost > 0 and gain < margin * cost:
        for j in range(m):
            if weights[j] == 0.0 or not price[j] > 0 or not equity > 0:
                continue
            cur = holdings[j] * price[j] / equity if holdings[j] != 0 else 0.0
            if weights[j] > cur:
                out[j] = cur
        return True, gain, cost
    return False, gain, cost
