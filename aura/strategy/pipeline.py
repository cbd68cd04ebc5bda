"""The decision path after the signal stage, shared by the live risk service and the backtester.

``risk_plan`` applies the gates in the order the design fixes (kill-switch -> stop-loss/take-profit ->
cost-benefit) and returns the lot-rounded legs to execute.  It is the only way a plan is made: the live risk
service calls it, the reference backtester calls it, and the fast backtest kernel calls its numba core
``plan_core`` directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from aura.strategy.capacity import cap_legs
from aura.strategy.packing import (
    F_BAND,
    F_CASH_BUFFER,
    F_CB_MARGIN,
    F_EXP_SLIP,
    F_MIN_TRADE,
    F_SL,
    F_TP,
    I_CB_HORIZON,
    pack_params,
)
from aura.strategy.params import StrategyParams
from aura.strategy.rebalance import (
    R_EXIT,
    R_KILL_SWITCH,
    R_STOP_LOSS,
    R_TAKE_PROFIT,
    SELL,
    LegBuffer,
    floor_units,
    price_array,
    rebalance_core,
    rule_arrays,
)
from aura.strategy.risk_gates import (
    STOP_LOSS,
    cost_benefit_adjust,
    drawdown_from_peak,
    kill_switch_fires,
    rolling_drawdown,
    stop_trigger,
)
from aura.strategy.types import Leg, MarketRule, Targets

GATE_PASS = 0
GATE_HOLD = 1  # cost-benefit held the buys back
GATE_KILL = 2
GATE_HALTED = 3
GATES = ("pass", "hold", "kill_switch", "halted")


@dataclass(frozen=True)
class PortfolioState:
    cash: float
    holdings: dict[str, float]  # base-asset quantity per symbol
    entry_prices: dict[str, float] = field(default_factory=dict)  # average entry, for stop-loss reachability
    equity_history: tuple[float, ...] = ()  # equity at each past cycle since the last reset or re-arm, oldest first
    halted: bool = False  # kill-switch latched (until it re-arms after its cooldown, or an operator resets it)
    # Highest equity since the last operator reset, before this decision (kill_switch_cap's peak).  The rolling
    # history restarts at every re-arm and is bounded, so it cannot carry this peak; 0: only the history.
    peak_equity: float = 0.0


@dataclass(frozen=True)
class RiskOutcome:
    legs: list[Leg]
    gate: str  # "kill_switch" | "halted" | "hold" | "pass"
    halted: bool
    reasons: list[str]
    drawdown: float
    equity: float = 0.0  # the equity the gates saw (append it to equity_history for the next cycle)
    drawdown_since_reset: float = 0.0  # from the peak since the last operator reset (kill_switch_cap's measure)
    capped: bool = False  # that drawdown reached kill_switch_cap: the latch holds until an operator reset


@njit(cache=True)
def portfolio_value(cash: float, holdings: np.ndarray, price: np.ndarray, mark: np.ndarray) -> float:
    """Cash plus holdings at the trade price, or at the mark (last known price) where there is none.

    A holding with neither is valued at 0: conservative, and it cannot make a price appear.
    """
    eq = cash
    for j in range(holdings.shape[0]):
        if holdings[j] != 0:
            p = price[j] if price[j] > 0 else mark[j]
            if p > 0:
                eq += holdings[j] * p
    return eq


@njit(cache=True, inline="always")
def plan_core(m: int, liquidate: bool, has_targets: bool, use_er: bool, weights: np.ndarray, er: np.ndarray,
              holdings: np.ndarray, entry: np.ndarray, price: np.ndarray, bar_open: np.ndarray,
              bar_high: np.ndarray, bar_low: np.ndarray, has_rule: np.ndarray, step: np.ndarray,
              step_scale: np.ndarray, step_units: np.ndarray, min_qty: np.ndarray, min_notional: np.ndarray,
              cash: float, fee_rate: float, ip: np.ndarray,
              fp: np.ndarray, work_hold: np.ndarray, work_w: np.ndarray, work_adj: np.ndarray,
              out_sym: np.ndarray, out_side: np.ndarray, out_qty: np.ndarray, out_px: np.ndarray,
              out_reason: np.ndarray) -> tuple[int, int]:
    """Gates 2 and 3 (and the liquidation of gate 1) on the first ``m`` entries of arrays in symbol-name order
    (the arrays may be longer: the fast kernel reuses buffers instead of slicing them on every bar).

    Returns (number of legs written, gate code).  Stop legs come first and carry their trigger price; the
    rebalance that follows assumes their proceeds (fee deducted) are in cash and never re-buys a name
    stopped out on this cycle.
    """
    if liquidate:
        for j in range(m):
            work_w[j] = 0.0
        n = rebalance_core(m, work_w, holdings, cash, price, has_rule, step, step_scale, step_units, min_qty,
                           min_notional, fee_rate, 0.0, out_sym, out_side, out_qty, out_px, out_reason, 0,
                           R_KILL_SWITCH)
        return n, GATE_KILL
    n = 0
    cash2 = cash
    for j in range(m):
        work_hold[j] = holdings[j]
        work_w[j] = -1.0  # marks "not stopped"
        if holdings[j] > 0 and price[j] > 0 and has_rule[j]:
            kind, px = stop_trigger(entry[j], bar_open[j], bar_high[j], bar_low[j], fp[F_SL], fp[F_TP])
            if kind != 0:
                qty = floor_units(holdings[j], step[j], step_scale[j], step_units[j])
                if qty >= min_qty[j] and qty * px >= min_notional[j]:
                    out_sym[n] = j
                    out_side[n] = SELL
                    out_qty[n] = qty
                    out_px[n] = px
                    out_reason[n] = R_STOP_LOSS if kind == STOP_LOSS else R_TAKE_PROFIT
                    n += 1
                    cash2 += qty * px * (1 - fee_rate)
                    work_hold[j] = holdings[j] - qty
                    work_w[j] = 0.0
    if not has_targets:
        return n, GATE_PASS
    keep = 1.0 - fp[F_CASH_BUFFER]
    for j in range(m):
        work_w[j] = 0.0 if work_w[j] == 0.0 else weights[j] * keep
    held_back, _gain, _cost = cost_benefit_adjust(
        m, work_w, work_hold, price, er, cash2, use_er, fp[F_BAND], fp[F_CB_MARGIN], fee_rate + fp[F_EXP_SLIP],
        ip[I_CB_HORIZON], work_adj)
    n = rebalance_core(m, work_adj, work_hold, cash2, price, has_rule, step, step_scale, step_units, min_qty,
                       min_notional, fee_rate, fp[F_MIN_TRADE], out_sym, out_side, out_qty, out_px, out_reason, n,
                       R_EXIT)
    return n, GATE_HOLD if held_back else GATE_PASS


# Rows of plan_rows' per-symbol matrix (the arguments of plan_core, one row each; has_rule as 1.0 / 0.0).
(P_W, P_ER, P_HOLD, P_ENTRY, P_PX, P_OPEN, P_HIGH, P_LOW, P_RULE, P_STEP, P_SCALE, P_UNITS, P_MIN_QTY,
 P_MIN_NOTIONAL) = range(14)
P_ROWS = 14
# Rows of its leg outputs: integers (symbol, side, reason) and floats (quantity, price).
L_SYM, L_SIDE, L_REASON = range(3)
L_QTY, L_PX = range(2)


# _nrt=False: plan_rows allocates nothing, so it needs no reference counting, and without it numba emits none
# of the out-of-line NRT_incref/NRT_decref calls it otherwise makes for each of the ~30 row views and inlined
# array bindings below on every plan, even for the kernel's uncounted buffers (whose handle is NULL, but the
# call is made to find that out): 15% of the daily portfolio pass.
@njit(cache=True, _nrt=False)
def plan_rows(m: int, liquidate: bool, has_targets: bool, use_er: bool, sym: np.ndarray, cash: float,
              fee_rate: float, ip: np.ndarray, fp: np.ndarray, work: np.ndarray, legs_i: np.ndarray,
              legs_f: np.ndarray) -> tuple[int, int]:
    """plan_core on row-packed arrays: ``sym`` (P_ROWS, >= m), ``work`` (3, >= m), ``legs_i`` (3, >= 2m) and
    ``legs_f`` (2, >= 2m).  Same arithmetic (plan_core is inlined here); what differs is the call: numba
    reference-counts every array argument of a call, and the fast backtest kernel plans on most bars, so
    six arguments instead of twenty-nine is most of a plan's cost."""
    return plan_core(m, liquidate, has_targets, use_er, sym[P_W], sym[P_ER], sym[P_HOLD], sym[P_ENTRY],
                     sym[P_PX], sym[P_OPEN], sym[P_HIGH], sym[P_LOW], sym[P_RULE], sym[P_STEP], sym[P_SCALE],
                     sym[P_UNITS], sym[P_MIN_QTY], sym[P_MIN_NOTIONAL], cash, fee_rate, ip, fp, work[0], work[1],
                     work[2], legs_i[L_SYM], legs_i[L_SIDE], legs_f[L_QTY], legs_f[L_PX], legs_i[L_REASON])


def risk_plan(
    targets: Targets | None,
    state: PortfolioState,
    prices: dict[str, float],
    rules: dict[str, MarketRule],
    params: StrategyParams,
    fee_rate: float,
    *,
    highs: dict[str, float] | None = None,
    lows: dict[str, float] | None = None,
    opens: dict[str, float] | None = None,
    marks: dict[str, float] | None = None,
    volumes: dict[str, float] | None = None,
    max_participation: float = math.inf,
    sent: dict[tuple[str, str], float] | None = None,
) -> RiskOutcome:
    """Kill-switch -> stop-loss / take-profit -> cost-benefit, then the lot-rounded rebalance.

    ``targets=None`` is a risk tick between signal cycles: only the kill-switch and the stops run.
    ``prices`` are the prices to trade at (live: the latest; backtest: the decision bar's close).
    ``highs``/``lows``/``opens`` (backtest) make the stops intrabar: a stop is hit if the bar's low reached
    it, and exits at the stop level or at the open if the bar gapped through it.  Without them the stops
    are checked on ``prices`` alone.  ``marks`` value holdings that have no trade price (a gap in the data)
    so that a missing price never looks like a loss to the kill-switch.  ``volumes`` (live risk: the decision
    bar's base volumes) cap every leg at ``max_participation`` of them, less what ``sent`` says earlier plans on
    that bar sent on the same side (capacity.py; the backtest caps at the bar it fills in instead, so it passes
    none).

    Without ``targets.expected_returns`` the cost-benefit gain test is skipped (the band still applies) and
    the reasons say so: a forecast that is not there must not silently freeze the book.
    """
    symbols = sorted(set(state.holdings) | (set(targets.weights) if targets is not None else set()))
    m = len(symbols)
    price = price_array(symbols, prices)
    mark = price_array(symbols, marks or {})
    holdings = np.array([float(state.holdings.get(s, 0.0)) for s in symbols], dtype=np.float64)
    equity = float(portfolio_value(float(state.cash), holdings, price, mark))
    history = (*state.equity_history, equity)
    drawdown = rolling_drawdown(history, params.kill_switch_window)
    peak = max(float(state.peak_equity), *history)
    since_reset = float(drawdown_from_peak(equity, peak))
    fires, cap_hit = kill_switch_fires(drawdown, equity, peak, float(params.kill_switch_drawdown),
                                       float(params.kill_switch_cap))
    liquidate = state.halted or bool(fires)
    weights = np.array([float(targets.weights.get(s, 0.0)) if targets else 0.0 for s in symbols])
    er_map = targets.expected_returns if targets is not None else {}
    er = np.array([float(er_map.get(s, 0.0)) for s in symbols], dtype=np.float64)
    entry = price_array(symbols, state.entry_prices)
    bar_open = price_array(symbols, opens) if opens is not None else price
    bar_high = price_array(symbols, highs) if highs is not None else price
    bar_low = price_array(symbols, lows) if lows is not None else price
    has_rule, step, step_scale, step_units, min_qty, min_notional = rule_arrays(symbols, rules)
    ip, fp = pack_params(params)
    buf = LegBuffer(max(1, 2 * m))
    work = [np.zeros(m) for _ in range(3)]
    n, gate = plan_core(m, liquidate, targets is not None, bool(er_map), weights, er, holdings, entry, price,
                        bar_open, bar_high, bar_low, has_rule, step, step_scale, step_units, min_qty, min_notional,
                        float(state.cash),
                        float(fee_rate), ip, fp, work[0], work[1], work[2], buf.sym, buf.side, buf.qty, buf.px,
                        buf.reason)
    legs = buf.legs(symbols, n)
    reasons: list[str] = []
    if volumes is not None:
        legs, cut = cap_legs(legs, volumes, max_participation, rules, sent)
        reasons.extend(cut)
    gate_name = GATES[gate]
    if liquidate:
        gate_name = "halted" if state.halted else "kill_switch"
        reasons.append(f"rolling drawdown {drawdown:.2%}; liquidate")
    if cap_hit:
        reasons.append(f"drawdown since the last reset {since_reset:.2%} reached the cap "
                       f"{params.kill_switch_cap:.2%}: latched until an operator reset")
    for leg in legs:
        if leg.reason in ("stop_loss", "take_profit"):
            entry_px = state.entry_prices.get(leg.symbol, math.nan)
            reasons.append(f"{leg.reason} {leg.symbol}: entry {entry_px:.8g}, exit {leg.ref_price:.8g}")
    if gate == GATE_HOLD:
        reasons.append("cost-benefit: expected gain of the buys does not cover their cost; holding")
    if targets is not None and not er_map and not liquidate:
        reasons.append("cost-benefit: no expected returns in targets; gain test skipped")
    return RiskOutcome(legs, gate_name, liquidate, reasons, drawdown, equity, since_reset, bool(cap_hit))
