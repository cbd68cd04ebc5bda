"""Composite score: cross-sectionally normalised factors combined with parameter weights.

Factors (raw, per symbol and bar): short momentum, long momentum, trend strength (close over its SMA),
volatility-adjusted return, and drawdown from the rolling high (a penalty).  Each factor is normalised across
the *eligible* universe of that bar (valid close and enough history), not across the screened candidates, so
the normalised tensors do not depend on the screen's thresholds and the optimizer can share them across a
whole grid.  Reductions run in symbol-name order, so a panel whose columns come in another order gives the
very same floats.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

F_MOM_SHORT = 0
F_MOM_LONG = 1
F_TREND = 2
F_VOL_ADJ = 3
F_DRAWDOWN = 4
N_FACTORS = 5
FACTOR_NAMES = ("mom_short", "mom_long", "trend", "vol_adj", "drawdown")

RANKS = 0
ZSCORES = 1
Z_CLIP = 3.0  # a freshly pumped listing must not swamp every other factor


@njit(cache=True)
def normalize_row(x: np.ndarray, eligible: np.ndarray, method: int, name_order: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share the mean rank) or clipped z-scores; NaN where not eligible."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    count = 0
    for j in range(n):
        if eligible[j] and math.isfinite(x[j]):
            count += 1
    if count == 0:
        return out
    if method == RANKS:
        for j in range(n):
            if not (eligible[j] and math.isfinite(x[j])):
                continue
            if count == 1:
                out[j] = 0.5
                continue
            twice = 0  # 2 * (number below + half the ties): an integer, so the rank is exact
            for i in range(n):
                if i != j and eligible[i] and math.isfinite(x[i]):
                    if x[i] < x[j]:
                        twice += 2
                    elif x[i] == x[j]:
                        twice += 1
            out[j] = twice / (2.0 * (count - 1))
        return out
    total = 0.0
    for k in range(n):
        j = name_order[k]
        if eligible[j] and math.isfinite(x[j]):
            total += x[j]
    mean = total / count
    ss = 0.0
    for k in range(n):
        j = name_order[k]
        if eligible[j] and math.isfinite(x[j]):
            d = x[j] - mean
            ss += d * d
    std = math.sqrt(ss / count)
    for j in range(n):
        if eligible[j] and math.isfinite(x[j]):
            z = (x[j] - mean) / std if std > 0 else 0.0
            out[j] = min(Z_CLIP, max(-Z_CLIP, z))
    return out


@njit(cache=True, inline="always")
def composite_value(z_ms: float, z_ml: float, z_tr: float, z_va: float, z_dd: float,
                    w_ms: float, w_ml: float, w_tr: float, w_va: float, w_dd: float) -> float:
    """Weighted sum in a fixed order; the drawdown factor is a penalty.  NaN if any factor is missing."""
    return w_ms * z_ms + w_ml * z_ml + w_tr * z_tr + w_va * z_va - w_dd * z_dd


@njit(cache=True)
def expected_return(mom_short: float, lookback: int) -> float:
    """Per-bar return forecast: the mean log return over the short momentum window (0 when unknown)."""
    if not mom_short > -1.0:
        return 0.0
    return math.log1p(mom_short) / lookback
