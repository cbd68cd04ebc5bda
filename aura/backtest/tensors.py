"""The per-panel tensors the fast backtest's signal pass reads, each one a loop of the very numba function
``compute_targets`` evaluates per bar (score.normalize_row, score.expected_return, signal.breadth_at, ...),
so that the tensors are bit-for-bit what the reference path computes.  fast.IndicatorCache builds and shares
them across a grid.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aura.strategy.indicators import sma_at
from aura.strategy.regime import btc_trend
from aura.strategy.score import expected_return, normalize_row
from aura.strategy.screen import passes_screen
from aura.strategy.signal import breadth_at


@njit(cache=True)
def normalize_tensor(raw: np.ndarray, elig: np.ndarray, method: int, name_order: np.ndarray) -> np.ndarray:
    out = np.empty_like(raw)
    for t in range(raw.shape[0]):
        out[t] = normalize_row(raw[t], elig[t], method, name_order)
    return out


@njit(cache=True)
def expected_return_tensor(mom: np.ndarray, lookback: int) -> np.ndarray:
    out = np.empty_like(mom)
    for t in range(mom.shape[0]):
        for j in range(mom.shape[1]):
            out[t, j] = expected_return(mom[t, j], lookback)
    return out


@njit(cache=True)
def breadth_series(close: np.ndarray, sma: np.ndarray, elig: np.ndarray) -> np.ndarray:
    out = np.empty(close.shape[0])
    for t in range(close.shape[0]):
        out[t] = breadth_at(close[t], sma[t], elig[t])
    return out


@njit(cache=True)
def btc_series(close: np.ndarray, btc_j: int, n: int) -> np.ndarray:
    out = np.full(close.shape[0], -1, dtype=np.int64)
    if btc_j < 0:
        return out
    for t in range(close.shape[0]):
        out[t] = btc_trend(close[t, btc_j], sma_at(close, t, btc_j, n))
    return out


@njit(cache=True)
def mark_tensor(close: np.ndarray) -> np.ndarray:
    """Last valid close up to each bar (NaN before the first): the valuation marks of engine step 5."""
    out = np.empty_like(close)
    for j in range(close.shape[1]):
        last = np.nan
        for t in range(close.shape[0]):
            if close[t, j] > 0:
                last = close[t, j]
            out[t, j] = last
    return out


@njit(cache=True)
def screen_lists(elig: np.ndarray, r_ms: np.ndarray, r_ml: np.ndarray, r_tr: np.ndarray, r_va: np.ndarray,
                 r_dd: np.ndarray, r_qv: np.ndarray, min_mom: float, max_dd: float, min_qv: float,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The screen's candidates of every bar as compressed rows: bar t's columns (ascending) are
    ``idx[ptr[t]:ptr[t + 1]]``.  passes_screen on the same raw tensors compute_targets reads; it depends on no
    weight, so a grid shares one list per distinct (lookbacks, min_history, thresholds)."""
    t_len, n = elig.shape
    ok = np.zeros((t_len, n), dtype=np.bool_)
    ptr = np.zeros(t_len + 1, dtype=np.int64)
    for t in range(t_len):
        c = 0
        for j in range(n):
            # passes_screen() starts with the eligibility test: doing it first skips the other loads.
            o = elig[t, j] and passes_screen(True, r_ms[t, j], r_ml[t, j], r_tr[t, j], r_va[t, j], r_dd[t, j],
                                             r_qv[t, j], min_mom, max_dd, min_qv)
            ok[t, j] = o
            c += o
        ptr[t + 1] = ptr[t] + c
    idx = np.empty(ptr[t_len], dtype=np.int64)
    c = 0
    for t in range(t_len):
        for j in range(n):
            if ok[t, j]:
                idx[c] = j
                c += 1
    return ptr, idx
