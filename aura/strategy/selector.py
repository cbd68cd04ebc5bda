"""Selector: how many names the regime allows, and which names make the cut."""

from __future__ import annotations

import numpy as np
from numba import njit

from aura.strategy.regime import BULL, SIDEWAYS


@njit(cache=True, inline="always")
def regime_book(regime: int, exposure_bull: float, exposure_sideways: float, exposure_bear: float,
                k_bull: int, k_sideways: int, k_bear: int) -> tuple[float, int]:
    """(exposure, number of names) for a regime."""
    if regime == BULL:
        return exposure_bull, k_bull
    if regime == SIDEWAYS:
        return exposure_sideways, k_sideways
    return exposure_bear, k_bear


@njit(cache=True, inline="always")
def pick_into(order: np.ndarray, m: int, k: int, name_rank: np.ndarray) -> int:
    """Keep the first ``k`` of ``order[:m]`` (best first) and put them in symbol-name order, in place, so that
    the sums over them never depend on ranking order.  Returns how many were kept."""
    kept = min(k, m)
    for a in range(1, kept):
        cur = order[a]
        b = a - 1
        while b >= 0 and name_rank[order[b]] > name_rank[cur]:
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = cur
    return kept


@njit(cache=True)
def pick(order: np.ndarray, k: int, name_rank: np.ndarray) -> np.ndarray:
    """Allocating convenience form of ``pick_into``."""
    out = order.copy()
    kept = pick_into(out, out.shape[0], k, name_rank)
    return out[:kept].copy()
