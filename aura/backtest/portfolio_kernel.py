"""The fast backtest's portfolio pass: engine.run_reference's loop given the signal pass's targets (fast.py).

Same order of steps as the reference engine, same numba cores: the kill-switch policy (risk_gates), the plan
(pipeline.plan_rows, i.e. plan_core) and the fills (execution.fill_leg).  What differs is only the bookkeeping
(arrays instead of dicts); tests/backtest/test_fast_parity.py pins both to identical trades.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aura.backtest.engine import AT_CLOSE, AT_INTRABAR, AT_OPEN, BacktestConfig
from aura.backtest.execution import average_entry, fill_leg, impact_slippage, remaining_after_sell, sell_fill, tradable
from aura.backtest.refcount import alive, uncounted
from aura.strategy.packing import F_KS_CAP, F_KS_DD, F_SL, F_TP, I_KS_COOLDOWN, I_KS_WINDOW
from aura.strategy.pipeline import (
    L_PX,
    L_QTY,
    L_REASON,
    L_SIDE,
    L_SYM,
    P_ENTRY,
    P_ER,
    P_HIGH,
    P_HOLD,
    P_LOW,
    P_MIN_NOTIONAL,
    P_MIN_QTY,
    P_OPEN,
    P_PX,
    P_ROWS,
    P_RULE,
    P_SCALE,
    P_STEP,
    P_UNITS,
    P_W,
    plan_rows,
)
from aura.strategy.rebalance import R_DATA_END, R_STOP_LOSS, R_TAKE_PROFIT
from aura.strategy.risk_gates import drawdown_from_peak, kill_switch_after, kill_switch_fires, rearm_due, stop_trigger

# Slots of the execution settings array the pass reads (one array instead of five scalar arguments).
X_CASH0, X_FEE, X_SLIP, X_IMPACT, X_MAX_PART = range(5)


def exec_array(cfg: BacktestConfig) -> np.ndarray:
    out = np.zeros(5)
    out[X_CASH0], out[X_FEE], out[X_SLIP] = cfg.initial_cash, cfg.fee_rate, cfg.slippage
    out[X_IMPACT], out[X_MAX_PART] = cfg.impact, cfg.max_participation
    return out


@njit(cache=True, inline="always")
def _record(nt: int, cap: int, t: int, j: int, side: int, qty: float, px: float, fee: float, reason: int,
            at: int, tr_bar: np.ndarray, tr_sym: np.ndarray, tr_side: np.ndarray, tr_qty: np.ndarray,
            tr_px: np.ndarray, tr_fee: np.ndarray, tr_reason: np.ndarray, tr_at: np.ndarray) -> int:
    if nt < cap:
        tr_bar[nt] = t
        tr_sym[nt] = j
        tr_side[nt] = side
        tr_qty[nt] = qty
        tr_px[nt] = px
        tr_fee[nt] = fee
        tr_reason[nt] = reason
        tr_at[nt] = at
    return nt + 1


@njit(cache=True, inline="always")
def _book_fill(held: float, entry: float, step: float, side: int, qty: float, px: float) -> tuple[float, float]:
    """One fill of a symbol held ``held`` at average entry ``entry``: (holding, average entry) after it.
    Scalars in and out: numba reference-counts every array an inlined function binds, with out-of-line calls,
    and fills happen on most decision bars."""
    if side < 0:
        rest = remaining_after_sell(held, qty, step)
        return rest, (0.0 if rest == 0.0 else entry)
    return held + qty, average_entry(held, entry, qty, px)


@njit(cache=True)
def _held_list(hold: np.ndarray, held: np.ndarray) -> int:
    """Indices of non-zero holdings in column (= name) order; rebuilt only when a position opens or closes."""
    c = 0
    for j in range(hold.shape[0]):
        if hold[j] != 0:
            held[c] = j
            c += 1
    return c



@njit(cache=True)
def portfolio_pass(dmask: np.ndarray, n_targets: np.ndarray, t_sym: np.ndarray, t_w: np.ndarray,
                   opn: np.ndarray, high: np.ndarray, low: np.ndarray,
                   close: np.ndarray, volume: np.ndarray, marks: np.ndarray, last: np.ndarray,
                   has_rule: np.ndarray, step: np.ndarray, step_scale: np.ndarray, step_units: np.ndarray,
                   min_qty: np.ndarray, min_notional: np.ndarray, er_t: np.ndarray, ip: np.ndarray,
                   fp: np.ndarray, xp: np.ndarray, ts: np.ndarray, bar_ms: int, fill_close: bool, start: int,
                   end: int, out_equity: np.ndarray, out_cash: np.ndarray, out_halted: np.ndarray,
                   tr_bar: np.ndarray, tr_sym: np.ndarray, tr_side: np.ndarray, tr_qty: np.ndarray,
                   tr_px: np.ndarray, tr_fee: np.ndarray, tr_reason: np.ndarray, tr_at: np.ndarray,
                   ) -> tuple[int, int, int, int, int, float]:
    """engine.run_reference given the signal pass's targets.  Candle arrays are symbol-major (N, T): between
    signals the pass only reads the few held symbols bar after bar, and hourly bar-major rows would drag
    whole cache lines of every other symbol through memory.  ``xp``: the execution settings (``exec_array``);
    ``ts``: bar open times (the kill-switch's cooldown clock).  Returns (trades written, first halted run bar or
    -1, skipped legs, capped run bar or -1, legs cut by the participation cap, notional they dropped); trades
    written > capacity means the trade buffers were too small (the caller retries)."""
    n, t_len = close.shape
    cap = tr_bar.shape[0]
    hold = np.zeros(n)
    entry = np.zeros(n)
    held = np.zeros(n, dtype=np.int64)
    n_held = 0
    # compact arrays over the plan's symbols (held or targeted, name order), as risk_plan builds them
    rel = np.zeros(n, dtype=np.int64)
    c_sym = np.zeros((P_ROWS, n))  # pipeline.plan_rows' inputs
    work = np.zeros((3, n))
    legs_i = np.zeros((3, 2 * n), dtype=np.int64)
    legs_f = np.zeros((2, 2 * n))
    # uncounted aliases of what each plan call binds (the arrays above own the memory)
    u_sym, u_work, u_legs_i, u_legs_f = uncounted(c_sym), uncounted(work), uncounted(legs_i), uncounted(legs_f)
    u_ip, u_fp = uncounted(ip), uncounted(fp)
    # and of the trade columns each _record binds (arguments: the caller owns them)
    ut_bar, ut_sym, ut_side, ut_qty = uncounted(tr_bar), uncounted(tr_sym), uncounted(tr_side), uncounted(tr_qty)
    ut_px, ut_fee, ut_reason, ut_at = uncounted(tr_px), uncounted(tr_fee), uncounted(tr_reason), uncounted(tr_at)
    pend_sym = np.zeros(2 * n, dtype=np.int64)
    pend_side = np.zeros(2 * n, dtype=np.int64)
    pend_qty = np.zeros(2 * n)
    pend_reason = np.zeros(2 * n, dtype=np.int64)
    n_pend = 0
    window = ip[I_KS_WINDOW]
    cooldown = ip[I_KS_COOLDOWN]
    fee, slip, impact, max_part = xp[X_FEE], xp[X_SLIP], xp[X_IMPACT], xp[X_MAX_PART]
    run_len = end - start + 1
    # Monotonic deque (run-bar index, equity) for the peak over the last ``window`` risk ticks, this one
    # included (risk_gates.rolling_drawdown).  Linear buffers: no wrap-around arithmetic in the hot loop.
    dq_pos = np.zeros(max(1, run_len), dtype=np.int64)
    dq_val = np.zeros(max(1, run_len))
    dq_head = 0
    dq_tail = 0
    cash = xp[X_CASH0]
    peak = 0.0  # highest decision equity of the run (kill_switch_cap's peak: a backtest has no reset)
    halted = capped = False
    latched_ms = 0
    halted_bar = capped_bar = -1
    skipped = capped_legs = 0
    capped_notional = 0.0
    nt = 0
    d = -1
    for t in range(start, end + 1):
        i = t - start
        changed = False
        # 1. fills at this bar's open
        for p in range(n_pend):
            j = pend_sym[p]
            if not tradable(opn[j, t], volume[j, t]):
                skipped += 1
                continue
            qty, px, dcash, f, dropped = fill_leg(pend_side[p], pend_qty[p], hold[j], opn[j, t], volume[j, t], cash,
                                                  step[j], min_qty[j], min_notional[j], slip, impact, max_part, fee)
            if dropped > 0:
                capped_legs += 1
                capped_notional += dropped * opn[j, t]
            if not qty > 0:
                skipped += 0 if dropped > 0 else 1
                continue
            cash += dcash
            before = hold[j]
            hold[j], entry[j] = _book_fill(before, entry[j], step[j], pend_side[p], qty, px)
            changed = changed or (before == 0.0) != (hold[j] == 0.0)  # opened or closed: rebuild the held list
            nt = _record(nt, cap, t, j, pend_side[p], qty, px, f, pend_reason[p], AT_OPEN, ut_bar, ut_sym,
                         ut_side, ut_qty, ut_px, ut_fee, ut_reason, ut_at)
        n_pend = 0
        if changed:
            n_held = _held_list(hold, held)
        # 2. a latched kill-switch whose cooldown has run re-arms: its window restarts here (engine step 2)
        if halted and rearm_due(halted, capped, latched_ms, ts[t], cooldown, bar_ms):
            halted = False
            dq_head = dq_tail
        # 3. decision at the close
        decision = dmask[t]
        n_target = 0
        if decision:
            d += 1  # index of this decision in the signal pass's sparse targets
            n_target = n_targets[d]
        eq = cash  # pipeline.portfolio_value over the held names, in name order
        for h in range(n_held):
            j = held[h]
            pj = close[j, t] if close[j, t] > 0 else marks[j, t]
            if pj > 0:
                eq += hold[j] * pj
        while dq_tail > dq_head and dq_val[dq_tail - 1] <= eq:
            dq_tail -= 1
        dq_pos[dq_tail] = i
        dq_val[dq_tail] = eq
        dq_tail += 1
        while dq_pos[dq_head] <= i - window:
            dq_head += 1
        peak = max(peak, eq)
        fires, cap_hit = kill_switch_fires(drawdown_from_peak(eq, dq_val[dq_head]), eq, peak, fp[F_KS_DD],
                                           fp[F_KS_CAP])
        liquidate = halted or fires
        if liquidate and halted_bar < 0:
            halted_bar = i
        halted, capped, latched_ms = kill_switch_after(halted, liquidate, capped, cap_hit, latched_ms, ts[t])
        if capped and capped_bar < 0:
            capped_bar = i
        out_halted[i] = halted
        n_legs = 0
        need_plan = liquidate or n_target > 0 or (decision and n_held > 0)
        if not need_plan:
            # A risk tick without a signal only acts on a stop: look for one before building the plan inputs.
            for h in range(n_held):
                j = held[h]
                if close[j, t] > 0 and opn[j, t] > 0 and has_rule[j] and hold[j] > 0:
                    kind, _px = stop_trigger(entry[j], opn[j, t], high[j, t], low[j, t], fp[F_SL], fp[F_TP])
                    if kind != 0:
                        need_plan = True
                        break
        if need_plan and (n_held > 0 or n_target > 0):
            # risk_plan's symbol set: held or targeted, merged in name (= column) order
            m = 0
            h = 0
            g = 0
            while h < n_held or g < n_target:
                jh = held[h] if h < n_held else n
                jg = t_sym[d, g] if g < n_target else n
                j = min(jh, jg)
                c_sym[P_W, m] = t_w[d, g] if jg == j else 0.0
                c_sym[P_ER, m] = er_t[t, j] if jg == j else 0.0
                if jh == j:
                    h += 1
                if jg == j:
                    g += 1
                rel[m] = j
                c_sym[P_HOLD, m] = hold[j]
                c_sym[P_ENTRY, m] = entry[j]
                c_sym[P_PX, m] = close[j, t]
                ok = close[j, t] > 0 and opn[j, t] > 0
                c_sym[P_OPEN, m] = opn[j, t] if ok else np.nan
                c_sym[P_HIGH, m] = high[j, t] if ok else np.nan
                c_sym[P_LOW, m] = low[j, t] if ok else np.nan
                c_sym[P_RULE, m] = 1.0 if has_rule[j] else 0.0
                c_sym[P_STEP, m] = step[j]
                c_sym[P_SCALE, m] = step_scale[j]
                c_sym[P_UNITS, m] = step_units[j]
                c_sym[P_MIN_QTY, m] = min_qty[j]
                c_sym[P_MIN_NOTIONAL, m] = min_notional[j]
                m += 1
            n_legs, _gate = plan_rows(m, liquidate, decision, True, u_sym, cash, fee, u_ip, u_fp, u_work, u_legs_i,
                                      u_legs_f)
        # 4. stops inside this bar; the rest now (fill at close) or at the next open
        changed = False
        for b in range(n_legs):
            j = rel[legs_i[L_SYM, b]]
            r = legs_i[L_REASON, b]
            side = legs_i[L_SIDE, b]
            is_stop = R_STOP_LOSS <= r <= R_TAKE_PROFIT  # the two stop reasons have adjacent codes
            if not (is_stop or fill_close):
                pend_sym[n_pend] = j
                pend_side[n_pend] = side
                pend_qty[n_pend] = legs_f[L_QTY, b]
                pend_reason[n_pend] = r
                n_pend += 1
                continue
            if not tradable(close[j, t], volume[j, t]):
                skipped += 1
                continue
            ref = legs_f[L_PX, b] if is_stop else close[j, t]
            at = AT_INTRABAR if is_stop else AT_CLOSE
            qty, px, dcash, f, dropped = fill_leg(side, legs_f[L_QTY, b], hold[j], ref, volume[j, t], cash, step[j],
                                                  min_qty[j], min_notional[j], slip, impact, max_part, fee)
            if dropped > 0:
                capped_legs += 1
                capped_notional += dropped * ref
            if not qty > 0:
                skipped += 0 if dropped > 0 else 1
                continue
            cash += dcash
            before = hold[j]
            hold[j], entry[j] = _book_fill(before, entry[j], step[j], side, qty, px)
            changed = changed or (before == 0.0) != (hold[j] == 0.0)
            nt = _record(nt, cap, t, j, side, qty, px, f, r, at, ut_bar, ut_sym, ut_side, ut_qty, ut_px,
                         ut_fee, ut_reason, ut_at)
        if changed:
            n_held = _held_list(hold, held)
        # 5. series that end here while the run goes on (never capped; they pay the impact of their size)
        if t < t_len - 1:
            for h in range(n_held):
                j = held[h]
                if last[j] == t:
                    px, proceeds, f = sell_fill(hold[j], close[j, t],
                                                impact_slippage(hold[j], volume[j, t], slip, impact), fee)
                    cash += proceeds
                    nt = _record(nt, cap, t, j, -1, hold[j], px, f, R_DATA_END, AT_CLOSE, ut_bar, ut_sym,
                                 ut_side, ut_qty, ut_px, ut_fee, ut_reason, ut_at)
                    hold[j] = 0.0
                    entry[j] = 0.0
                    changed = True
            if changed:
                n_held = _held_list(hold, held)
        # 6. mark to market
        eq = cash
        for h in range(n_held):
            j = held[h]
            pj = close[j, t] if close[j, t] > 0 else marks[j, t]
            if pj > 0:
                eq += hold[j] * pj
        out_equity[i] = eq
        out_cash[i] = cash
    alive(c_sym)  # the owners of the uncounted aliases live until here
    alive(work)
    alive(legs_i)
    alive(legs_f)
    alive(ip)
    alive(fp)
    return nt, halted_bar, skipped, capped_bar, capped_legs, capped_notional

