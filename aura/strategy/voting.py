"""Robust voting: rank the candidates on several snapshots and keep the names that rank well on all of them."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def vote_order_into(cands: np.ndarray, m: int, comp: np.ndarray, name_rank: np.ndarray, vals: np.ndarray,
                    total: np.ndarray, order: np.ndarray, limit: int) -> None:
    """Write into ``order[:limit]`` the best ``limit`` of the candidates ``cands[:m]``, best first, by summed
    rank (Borda count).  The order is total, so the first ``limit`` are the same as in a full sort.

    ``comp[k, j]`` is the composite score of symbol j on snapshot k (k = 0 is the decision bar).  On each
    snapshot a candidate's rank is 1 + the number of candidates scoring strictly higher; a candidate without
    a score on a snapshot (too young then) gets the worst rank, m.  Ties on the summed rank go to the higher
    score on the decision bar, then to the symbol name.  Ranks are integers, so there is no rounding to
    disagree about.  ``vals`` (>= V*m), ``total`` and ``order`` (>= m) are scratch/output buffers, so the
    optimizer's inner loop allocates nothing.
    """
    v = comp.shape[0]
    for k in range(v):
        for a in range(m):
            vals[k * m + a] = comp[k, cands[a]]
    vote_rank_into(cands, m, v, vals, name_rank, total, order, limit)


@njit(cache=True, inline="always")
def vote_rank_into(cands: np.ndarray, m: int, v: int, vals: np.ndarray, name_rank: np.ndarray, total: np.ndarray,
                   order: np.ndarray, limit: int) -> None:
    """The ranking half of ``vote_order_into``, on scores already gathered: ``vals[k * m + a]`` is candidate
    ``cands[a]``'s composite on snapshot k (NaN: no score).  The fast backtest kernel gathers them straight
    from its tensors and calls this, so both paths share the ranking and its tie-breaks."""
    for a in range(m):
        total[a] = 0
    for k in range(v):
        base = k * m
        for a in range(m):
            va = vals[base + a]
            if va != va:  # NaN: no score on this snapshot
                total[a] += m
                continue
            r = 1
            for b in range(m):
                r += vals[base + b] > va  # branch-free so LLVM can vectorise the count
            total[a] += r
    # Selection of the best ``limit`` positions on (total asc, score at t desc, name asc): the selector
    # needs a handful out of a few dozen, and a linear scan per pick predicts better than a sort.
    for a in range(m):
        order[a] = a
    limit = min(limit, m)
    for a in range(limit):
        best = a
        for b in range(a + 1, m):
            o = order[b]
            x = order[best]
            if total[o] != total[x]:
                better = total[o] < total[x]
            elif vals[o] != vals[x]:
                better = vals[o] > vals[x]
            else:
                better = name_rank[cands[o]] < name_rank[cands[x]]
            if better:
                best = b
        tmp = order[a]
        order[a] = order[best]
        order[best] = tmp
    for a in range(limit):
        order[a] = cands[order[a]]


@njit(cache=True)
def vote_order(cands: np.ndarray, comp: np.ndarray, name_rank: np.ndarray) -> np.ndarray:
    """Allocating convenience form of ``vote_order_into``: the candidates, best first."""
    m = cands.shape[0]
    vals = np.empty(max(1, comp.shape[0] * m))
    total = np.zeros(max(1, m), dtype=np.int64)
    order = np.zeros(max(1, m), dtype=np.int64)
    vote_order_into(cands, m, comp, name_rank, vals, total, order, m)
    return order[:m].copy()
