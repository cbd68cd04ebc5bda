"""Signal stage: screen -> composite score -> robust vote -> regime -> selector -> sizing.

``compute_targets(panel, params, state)`` is what the live signal service calls on ``panel.upto(t)`` and what
the reference backtester calls on every decision bar.  All arithmetic runs in numba functions that the fast
backtest kernel calls too (on precomputed indicator tensors instead of per-bar windows), so there is one
definition of the behaviour; tests assert both paths trade identically.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aura.strategy.indicators import (
    DRAWDOWN,
    MOMENTUM,
    QUOTE_VOLUME,
    TREND,
    VOL_ADJ,
    VOLATILITY,
    history_ok,
    indicator_at,
    sma_at,
)
from aura.strategy.packing import (
    F_B_BEAR,
    F_B_BULL,
    F_EXP_BEAR,
    F_EXP_BULL,
    F_EXP_SIDE,
    F_KELLY,
    F_MAX_DD,
    F_MAX_W,
    F_MIN_MOM,
    F_MIN_QV,
    F_W_DD,
    F_W_ML,
    F_W_MS,
    F_W_TR,
    F_W_VA,
    I_CONFIRM,
    I_DD_WIN,
    I_K_BEAR,
    I_K_BULL,
    I_K_SIDE,
    I_LIQ_WIN,
    I_MIN_HIST,
    I_MOM,
    I_MOM_LONG,
    I_NORM,
    I_REGIME_SMA,
    I_SIZING,
    I_SMA,
    I_VOL_WIN,
    I_VOTE_STEP,
    I_VOTES,
    I_WEIGHTING,
    pack_params,
)
from aura.strategy.params import StrategyParams
from aura.strategy.regime import (
    NO_CANDIDATE,
    REGIME_NAMES,
    breadth_value,
    btc_trend,
    raw_regime,
    regime_step,
)
from aura.strategy.score import (
    F_DRAWDOWN,
    F_MOM_LONG,
    F_MOM_SHORT,
    F_TREND,
    F_VOL_ADJ,
    N_FACTORS,
    composite_value,
    expected_return,
    normalize_row,
)
from aura.strategy.screen import passes_screen
from aura.strategy.selector import pick_into, regime_book
from aura.strategy.sizing import size_weights_into
from aura.strategy.state import SignalState
from aura.strategy.types import Panel, Targets
from aura.strategy.voting import vote_rank_into

# Raw rows computed per snapshot besides the five score factors.
R_QUOTE_VOLUME = N_FACTORS
R_VOLATILITY = N_FACTORS + 1
R_SMA = N_FACTORS + 2
N_ROWS = N_FACTORS + 3


@njit(cache=True)
def raw_rows(close: np.ndarray, volume: np.ndarray, s: int, ip: np.ndarray) -> np.ndarray:
    """Every raw indicator the signal needs at bar ``s`` for every symbol: (N_ROWS, N)."""
    n = close.shape[1]
    out = np.empty((N_ROWS, n))
    for j in range(n):
        out[F_MOM_SHORT, j] = indicator_at(MOMENTUM, close, volume, s, j, ip[I_MOM])
        out[F_MOM_LONG, j] = indicator_at(MOMENTUM, close, volume, s, j, ip[I_MOM_LONG])
        out[F_TREND, j] = indicator_at(TREND, close, volume, s, j, ip[I_SMA])
        out[F_VOL_ADJ, j] = indicator_at(VOL_ADJ, close, volume, s, j, ip[I_VOL_WIN])
        out[F_DRAWDOWN, j] = indicator_at(DRAWDOWN, close, volume, s, j, ip[I_DD_WIN])
        out[R_QUOTE_VOLUME, j] = indicator_at(QUOTE_VOLUME, close, volume, s, j, ip[I_LIQ_WIN])
        out[R_VOLATILITY, j] = indicator_at(VOLATILITY, close, volume, s, j, ip[I_VOL_WIN])
        out[R_SMA, j] = sma_at(close, s, j, ip[I_SMA])
    return out


@njit(cache=True)
def eligible_row(close: np.ndarray, s: int, min_history: int) -> np.ndarray:
    n = close.shape[1]
    out = np.zeros(n, dtype=np.bool_)
    for j in range(n):
        out[j] = close[s, j] > 0 and history_ok(close, s, j, min_history)
    return out


@njit(cache=True)
def breadth_at(close_row: np.ndarray, sma_row: np.ndarray, elig_row: np.ndarray) -> float:
    above = 0
    counted = 0
    for j in range(close_row.shape[0]):
        if elig_row[j] and sma_row[j] > 0:
            counted += 1
            if close_row[j] > sma_row[j]:
                above += 1
    return breadth_value(above, counted)


@njit(cache=True, inline="always")
def decide(comp: np.ndarray, screen: np.ndarray, vol_row: np.ndarray, er_row: np.ndarray, regime: int,
           ip: np.ndarray, fp: np.ndarray, name_rank: np.ndarray, w: np.ndarray, cands: np.ndarray,
           total: np.ndarray, order: np.ndarray, fwork: np.ndarray) -> None:
    """Write the target weights into ``w`` (N,) given the candidates (``screen``), their composite scores
    on each vote snapshot (``comp``, only candidate columns are read) and the regime in force.

    ``cands``, ``total``, ``order`` (>= N ints) and ``fwork`` (>= V*N floats) are scratch buffers, so the
    optimizer's inner loop allocates (and slices) nothing.
    """
    n = screen.shape[0]
    for j in range(n):
        w[j] = 0.0
    exposure, k = regime_book(regime, fp[F_EXP_BULL], fp[F_EXP_SIDE], fp[F_EXP_BEAR],
                              ip[I_K_BULL], ip[I_K_SIDE], ip[I_K_BEAR])
    if not exposure > 0 or k <= 0:
        return
    m = 0
    for j in range(n):
        cands[m] = j
        m += screen[j]  # branch-free: the screen pattern is data and would defeat the branch predictor
    if m == 0:
        return
    v = comp.shape[0]
    for s in range(v):
        for a in range(m):
            fwork[s * m + a] = comp[s, cands[a]]
    choose_into(cands, m, v, fwork, vol_row, er_row, exposure, k, ip, fp, name_rank, total, order, w)


@njit(cache=True, inline="always")
def choose_into(cands: np.ndarray, m: int, v: int, vals: np.ndarray, vol_row: np.ndarray, er_row: np.ndarray,
                exposure: float, k: int, ip: np.ndarray, fp: np.ndarray, name_rank: np.ndarray, total: np.ndarray,
                order: np.ndarray, w: np.ndarray) -> int:
    """``decide`` after the screen: vote on the ``m >= 1`` candidates ``cands`` (their scores gathered into
    ``vals`` as ``vote_rank_into`` reads them), keep the regime's ``k``, size them.  Writes ``w`` at the kept
    names only and returns how many were kept, which are ``order[:kept]`` in name order.  The fast backtest
    kernel calls this on its precomputed candidate lists."""
    kept = min(k, m)
    if kept == m:
        # Every candidate is kept: pick_into puts them in name order whatever order the vote gives them, so
        # the vote is skipped (a fifth of the daily decision bars; same names, same order, same weights).
        for a in range(m):
            order[a] = cands[a]
    else:
        vote_rank_into(cands, m, v, vals, name_rank, total, order, kept)
    kept = pick_into(order, kept, k, name_rank)
    size_weights_into(order, kept, vol_row, er_row, exposure, fp[F_MAX_W], ip[I_WEIGHTING], ip[I_SIZING],
                      fp[F_KELLY], w)
    return kept


@njit(cache=True)
def signal_core(close: np.ndarray, volume: np.ndarray, t: int, btc_j: int, name_rank: np.ndarray,
                name_order: np.ndarray, ip: np.ndarray, fp: np.ndarray, regime: int, candidate: int, count: int,
                advance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int, float]:
    """(weights, composite at t, expected returns, raw regime, regime, candidate, count, breadth)."""
    n = close.shape[1]
    votes = ip[I_VOTES]
    comp = np.full((votes, n), np.nan)
    screen = np.zeros(n, dtype=np.bool_)
    rows_t = np.empty((N_ROWS, n))
    elig_t = np.zeros(n, dtype=np.bool_)
    for k in range(votes):
        s = t - k * ip[I_VOTE_STEP]
        if s < 0:
            break  # before the first bar: no score, the vote counts it as worst
        rows = raw_rows(close, volume, s, ip)
        elig = eligible_row(close, s, ip[I_MIN_HIST])
        z = np.empty((N_FACTORS, n))
        for f in range(N_FACTORS):
            z[f] = normalize_row(rows[f], elig, ip[I_NORM], name_order)
        for j in range(n):
            comp[k, j] = composite_value(z[0, j], z[1, j], z[2, j], z[3, j], z[4, j], fp[F_W_MS], fp[F_W_ML],
                                         fp[F_W_TR], fp[F_W_VA], fp[F_W_DD])
        if k == 0:
            rows_t = rows
            elig_t = elig
    er = np.zeros(n)
    for j in range(n):
        screen[j] = passes_screen(elig_t[j], rows_t[F_MOM_SHORT, j], rows_t[F_MOM_LONG, j], rows_t[F_TREND, j],
                                  rows_t[F_VOL_ADJ, j], rows_t[F_DRAWDOWN, j], rows_t[R_QUOTE_VOLUME, j],
                                  fp[F_MIN_MOM], fp[F_MAX_DD], fp[F_MIN_QV])
        er[j] = expected_return(rows_t[F_MOM_SHORT, j], ip[I_MOM])
    breadth = breadth_at(close[t], rows_t[R_SMA], elig_t)
    btc = btc_trend(close[t, btc_j], sma_at(close, t, btc_j, ip[I_REGIME_SMA])) if btc_j >= 0 else -1
    raw = raw_regime(breadth, btc, fp[F_B_BULL], fp[F_B_BEAR])
    if advance:
        regime, candidate, count = regime_step(regime, candidate, count, raw, ip[I_CONFIRM])
    w = np.zeros(n)
    decide(comp, screen, rows_t[R_VOLATILITY], er, regime, ip, fp, name_rank, w, np.zeros(n, dtype=np.int64),
           np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(votes * n))
    return w, comp[0].copy(), er, raw, regime, candidate, count, breadth


def btc_column(symbols: tuple[str, ...]) -> int:
    """Index of BTC quoted in USDT (``BTC_USDT``, ``BTC/USDT``, ``BTCUSDT``), -1 when absent."""
    for j, sym in enumerate(symbols):
        if sym.upper().replace("/", "").replace("_", "").replace("-", "") in ("BTCUSDT", "BTC"):
            return j
    return -1


def name_ranks(symbols: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each column in name order, columns in name order): ties and sums never depend on column order."""
    order = np.array(sorted(range(len(symbols)), key=lambda j: symbols[j]), dtype=np.int64)
    rank = np.empty(len(symbols), dtype=np.int64)
    rank[order] = np.arange(len(symbols), dtype=np.int64)
    return rank, order


def compute_targets(
    panel: Panel, params: StrategyParams, state: SignalState | None = None
) -> tuple[Targets, SignalState]:
    """Targets for the last bar of ``panel`` (history up to and including the decision bar) and the state to
    pass to the next cycle.  ``state=None`` is a cold start (regime bear until one is confirmed).

    Calling it twice for the same bar with the returned state gives the same targets: hysteresis only
    advances when the decision bar's timestamp differs from the state's ``last_timestamp``.
    """
    state = state or SignalState()
    if len(panel.timestamps) == 0 or len(panel.symbols) == 0:
        return Targets(weights={}, regime=state.regime), state
    t = len(panel.timestamps) - 1
    ts = int(panel.timestamps[t])
    ip, fp = pack_params(params)
    rank, order = name_ranks(panel.symbols)
    cand = REGIME_NAMES.index(state.candidate) if state.candidate else NO_CANDIDATE
    w, comp, er, raw, regime, cand_out, count, breadth = signal_core(
        np.ascontiguousarray(panel.close, dtype=np.float64), np.ascontiguousarray(panel.volume, dtype=np.float64),
        t, btc_column(panel.symbols), rank, order, ip, fp, REGIME_NAMES.index(state.regime), cand,
        state.candidate_count, ts != state.last_timestamp,
    )
    syms = panel.symbols
    by_name = [int(j) for j in order]
    targets = Targets(
        weights={syms[j]: float(w[j]) for j in by_name if w[j] > 0},
        regime=REGIME_NAMES[regime],
        scores={syms[j]: float(comp[j]) for j in by_name if math.isfinite(comp[j])},
        expected_returns={syms[j]: float(er[j]) for j in by_name if er[j] != 0.0},
        raw_regime=REGIME_NAMES[raw],
        breadth=float(breadth),
    )
    new_state = SignalState(
        regime=REGIME_NAMES[regime],
        candidate=REGIME_NAMES[cand_out] if cand_out != NO_CANDIDATE else "",
        candidate_count=int(count),
        last_timestamp=ts,
    )
    return targets, new_state
