"""Causal indicators, each evaluated at one bar from the window that ends at that bar.

Why "at one bar" instead of a rolling pass: the live signal stage needs the value at the last bar only, and
the optimizer needs it at every bar.  Both call the *same* function (``*_at`` for one bar, ``indicator_tensor``
loops it over every bar), and each value is summed over its own window in a fixed order, never carried
forward as a running sum.  So a value never depends on how much history precedes its window, and the fast
path's precomputed tensors are bit-for-bit what ``compute_targets`` computes on ``panel.upto(t)``.

Any missing close (NaN) inside a window makes the value NaN (momentum, which only reads the two end points,
is NaN when either is missing): a symbol needs its full window of history before it can be scored, and
nothing is ever filled in.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Indicator kinds for indicator_tensor (small ints so one compiled loop serves them all).
MOMENTUM = 0  # close_t / close_{t-n} - 1
SMA = 1  # mean close over n bars
TREND = 2  # close_t / SMA_n - 1
VOLATILITY = 3  # population std of the n log returns ending at t
VOL_ADJ = 4  # log(close_t / close_{t-n}) / (VOLATILITY_n * sqrt(n))
DRAWDOWN = 5  # 1 - close_t / max(close over n bars)
QUOTE_VOLUME = 6  # mean of close * volume over n bars
KIND_NAMES = ("momentum", "sma", "trend", "volatility", "vol_adj", "drawdown", "quote_volume")


@njit(cache=True)
def momentum_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    if t < n:
        return np.nan
    c0 = close[t, j]
    c1 = close[t - n, j]
    if c0 > 0 and c1 > 0:
        return c0 / c1 - 1.0
    return np.nan


@njit(cache=True)
def sma_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    if t + 1 < n:
        return np.nan
    s = 0.0
    for i in range(t - n + 1, t + 1):
        v = close[i, j]
        if not v > 0:  # NaN or a non-positive price: the window is incomplete
            return np.nan
        s += v
    return s / n


@njit(cache=True)
def trend_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    m = sma_at(close, t, j, n)
    c = close[t, j]
    if m > 0 and c > 0:
        return c / m - 1.0
    return np.nan


@njit(cache=True)
def volatility_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    if t < n:
        return np.nan
    s = 0.0
    for i in range(t - n + 1, t + 1):
        a = close[i - 1, j]
        b = close[i, j]
        if not (a > 0 and b > 0):
            return np.nan
        s += math.log(b / a)
    mean = s / n
    ss = 0.0
    for i in range(t - n + 1, t + 1):
        d = math.log(close[i, j] / close[i - 1, j]) - mean
        ss += d * d
    return math.sqrt(ss / n)


@njit(cache=True)
def vol_adj_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    vol = volatility_at(close, t, j, n)
    if not vol >= 0:
        return np.nan
    r = math.log(close[t, j] / close[t - n, j])
    if vol == 0.0:
        return 0.0  # a flat series carries no risk-adjusted information
    return r / (vol * math.sqrt(n))


@njit(cache=True)
def drawdown_at(close: np.ndarray, t: int, j: int, n: int) -> float:
    if t + 1 < n:
        return np.nan
    hi = 0.0
    for i in range(t - n + 1, t + 1):
        v = close[i, j]
        if not v > 0:
            return np.nan
        if v > hi:
            hi = v
    return 1.0 - close[t, j] / hi


@njit(cache=True)
def quote_volume_at(close: np.ndarray, volume: np.ndarray, t: int, j: int, n: int) -> float:
    """Mean quote volume over the ``n`` bars to ``t``.  A NaN volume is unknown, not zero, and left out: a fallback
    provider's candle (CoinGecko's) has none, and counted as NaN it failed the liquidity screen of every pair for
    ``n`` bars, so one fallback decision bar emptied the book live where the backtest (exchange candles) held it.
    Most of the window unknown, or any close or volume invalid: NaN (no liquidity figure, the screen fails)."""
    if t + 1 < n:
        return np.nan
    s = 0.0
    known = 0
    for i in range(t - n + 1, t + 1):
        c = close[i, j]
        v = volume[i, j]
        if not c > 0:
            return np.nan
        if np.isnan(v):
            continue
        if not v >= 0:
            return np.nan
        s += c * v
        known += 1
    if 2 * known < n:
        return np.nan
    return s / known


@njit(cache=True)
def history_ok(close: np.ndarray, t: int, j: int, n: int) -> bool:
    """At least ``n`` valid closes up to and including bar ``t`` (scans back, stops as soon as it knows)."""
    count = 0
    for i in range(t, -1, -1):
        if close[i, j] > 0:
            count += 1
            if count >= n:
                return True
    return False


@njit(cache=True)
def indicator_at(kind: int, close: np.ndarray, volume: np.ndarray, t: int, j: int, n: int) -> float:
    if kind == MOMENTUM:
        return momentum_at(close, t, j, n)
    if kind == SMA:
        return sma_at(close, t, j, n)
    if kind == TREND:
        return trend_at(close, t, j, n)
    if kind == VOLATILITY:
        return volatility_at(close, t, j, n)
    if kind == VOL_ADJ:
        return vol_adj_at(close, t, j, n)
    if kind == DRAWDOWN:
        return drawdown_at(close, t, j, n)
    if kind == QUOTE_VOLUME:
        return quote_volume_at(close, volume, t, j, n)
    return np.nan


@njit(cache=True)
def indicator_tensor(kind: int, close: np.ndarray, volume: np.ndarray, n: int) -> np.ndarray:
    """``indicator_at`` at every bar and symbol: (T, N)."""
    t_len, n_sym = close.shape
    out = np.empty((t_len, n_sym))
    for t in range(t_len):
        for j in range(n_sym):
            out[t, j] = indicator_at(kind, close, volume, t, j, n)
    return out


@njit(cache=True)
def eligible_tensor(close: np.ndarray, min_history: int) -> np.ndarray:
    """(T, N) bool: a valid close at t and at least ``min_history`` valid closes so far."""
    t_len, n_sym = close.shape
    out = np.zeros((t_len, n_sym), dtype=np.bool_)
    for j in range(n_sym):
        count = 0
        for t in range(t_len):
            if close[t, j] > 0:
                count += 1
                out[t, j] = count >= min_history
    return out
