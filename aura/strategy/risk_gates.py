"""Risk gates as pure functions: kill-switch, stop-loss / take-profit, cost-benefit.

Each gate is usable on its own (and tested on its own); ``pipeline.risk_plan`` chains them in the order the
design fixes.  The array versions are numba functions because the fast backtest kernel calls them too.

The kill-switch's latch policy (``kill_switch_fires``, ``rearm_due``, ``kill_switch_after``) is written once
here and used by the reference backtest, the fast kernel and the live risk service alike.  Times are bar open
times in ms (the backtest's bar, the live target's or tick's ``as_of_ms``), never a wall clock, so a cooldown
counts bars of data and a replay re-arms exactly where the backtest does:

* the switch fires when the rolling drawdown reaches ``kill_switch_drawdown`` or the drawdown since the last
  operator reset reaches ``kill_switch_cap`` (below 1.0; the latter marks the latch *capped*);
* a latched, uncapped switch re-arms once ``kill_switch_cooldown`` bars have passed since it latched (0: never
  by itself).  The caller then measures the rolling drawdown from the re-arm on, or the peak that latched it,
  still inside the window, would latch it again at once;
* a capped latch stays until an operator reset, whatever the cooldown.
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
def kill_switch_fires(rolling_dd: float, equity: float, peak: float, threshold: float, cap: float,
                      ) -> tuple[bool, bool]:
    """(the switch fires, the cap is reached): the rolling drawdown against ``threshold``, the drawdown of
    ``equity`` from ``peak`` (the highest since the last reset) against ``cap``.  A cap of 1.0 or more is off
    (nothing to compute: the fast kernel calls this on every bar)."""
    cap_hit = cap < 1.0 and drawdown_from_peak(equity, peak) >= cap
    return rolling_dd >= threshold or cap_hit, cap_hit


@njit(cache=True, inline="always")
def rearm_due(halted: bool, capped: bool, latched_ms: int, now_ms: int, cooldown: int, bar_ms: int) -> bool:
    """Whether a latched switch re-arms at the decision on the bar opening at ``now_ms``."""
    return halted and not capped and cooldown > 0 and now_ms - latched_ms >= cooldown * bar_ms


@njit(cache=True, inline="always")
def kill_switch_after(halted: bool, liquidate: bool, capped: bool, cap_hit: bool, latched_ms: int,
                      now_ms: int) -> tuple[bool, bool, int]:
    """The latch after a decision that liquidated or not: (halted, capped, latched_ms).

    ``latched_ms`` moves only when the switch newly latches: the cooldown counts from the first bar of a halt,
    not from its last liquidation.  ``capped`` is cleared only by an operator reset, which is not a decision.
    """
    if liquidate and not halted:
        latched_ms = now_ms
    return liquidate, capped or cap_hit, latched_ms


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
