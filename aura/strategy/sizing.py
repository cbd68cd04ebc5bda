"""Position sizing: fixed fraction of the regime exposure (default) or a capped fractional Kelly."""

from __future__ import annotations

import numpy as np
from numba import njit

EQUAL = 0
INVERSE_VOL = 1
FIXED_FRACTION = 0
KELLY = 1


@njit(cache=True)
def size_weights(chosen: np.ndarray, vol: np.ndarray, er: np.ndarray, exposure: float, max_weight: float,
                 weighting: int, sizing: int, kelly_fraction: float) -> np.ndarray:
    """Allocating convenience form of ``size_weights_into``: weights in the order of ``chosen``."""
    w = np.zeros(vol.shape[0])
    size_weights_into(chosen, chosen.shape[0], vol, er, exposure, max_weight, weighting, sizing, kelly_fraction, w)
    out = np.zeros(chosen.shape[0])
    for a in range(chosen.shape[0]):
        out[a] = w[chosen[a]]
    return out


@njit(cache=True, inline="always")
def size_weights_into(chosen: np.ndarray, m: int, vol: np.ndarray, er: np.ndarray, exposure: float,
                      max_weight: float, weighting: int, sizing: int, kelly_fraction: float,
                      w: np.ndarray) -> None:
    """Write into ``w[j]`` the weight (fraction of equity) of each ``j`` in ``chosen[:m]`` (name order).

    Fixed fraction: ``exposure`` split equally or in proportion to 1/volatility, each capped at
    ``max_weight``; what a cap removes stays in cash (it is not pushed onto the other names, which would
    concentrate the book exactly when the cap is meant to prevent that).
    Kelly: ``kelly_fraction * mu / sigma^2`` per name with the per-bar return forecast ``mu`` and variance,
    clipped to [0, max_weight], and scaled down together if they add up to more than ``exposure``.
    """
    if m == 0 or not exposure > 0:
        return
    if sizing == KELLY:
        total = 0.0
        for a in range(m):
            j = chosen[a]
            var = vol[j] * vol[j]
            mu = er[j]
            if not mu > 0:
                f = 0.0
            elif var > 0:
                f = kelly_fraction * mu / var
            else:
                f = max_weight
            w[chosen[a]] = min(max(f, 0.0), max_weight)
            total += w[chosen[a]]
        if total > exposure:
            scale = exposure / total
            for a in range(m):
                w[chosen[a]] = w[chosen[a]] * scale
        return
    use_inv_vol = weighting == INVERSE_VOL
    if use_inv_vol:
        for a in range(m):
            if not vol[chosen[a]] > 0:
                use_inv_vol = False  # a zero or unknown volatility: 1/vol is meaningless, fall back to equal
    if use_inv_vol:
        inv_total = 0.0
        for a in range(m):
            inv_total += 1.0 / vol[chosen[a]]
        for a in range(m):
            w[chosen[a]] = min(exposure * ((1.0 / vol[chosen[a]]) / inv_total), max_weight)
    else:
        for a in range(m):
            w[chosen[a]] = min(exposure / m, max_weight)
