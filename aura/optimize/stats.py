"""The multiple-testing statistics of the promotion gate, as plain functions of return arrays.

* Deflated Sharpe Ratio (Bailey and Lopez de Prado 2014, "The Deflated Sharpe Ratio: Correcting for Selection
  Bias, Backtest Overfitting and Non-Normality"): the probability that the true Sharpe ratio exceeds the one
  the best of N trials would reach by luck alone.
* Probability of backtest overfitting by combinatorially symmetric cross-validation (Bailey, Borwein, Lopez de
  Prado and Zhu 2015, "The Probability of Backtest Overfitting"): how often the in-sample best is below the
  median out of sample.
* Hansen's (2005) test for superior predictive ability, through ``arch.bootstrap.SPA``: whether the best of
  the k models a search compared beats a benchmark, the search's data snooping accounted for.

Sharpe ratios here are per bar (not annualised), as the formulas require; T is a number of bars.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numba import njit

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def moments(x: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation (ddof 1), skewness, kurtosis) of a series.

    Skewness m3 / m2^1.5 and kurtosis m4 / m2^2 from the central moments m_k = mean((x - mean)^k); the kurtosis
    is NOT excess: a normal distribution has 3.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError("moments need a finite 1-d series of at least two values")
    mean = float(np.mean(x))
    d = x - mean
    m2 = float(np.mean(d * d))
    if m2 == 0.0:
        return mean, 0.0, 0.0, 3.0  # a constant: no dispersion, treated as normal-shaped
    return mean, float(np.std(x, ddof=1)), float(np.mean(d ** 3)) / m2 ** 1.5, float(np.mean(d ** 4)) / m2 ** 2


def expected_max_sharpe(trial_sharpes: np.ndarray | Sequence[np.ndarray]) -> tuple[float, int]:
    """(SR0, N): the Sharpe ratio the best of N trials reaches by luck when every true Sharpe is 0 (paper, eq. 2):

        SR0 = sqrt(V[SR_n]) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))

    g the Euler-Mascheroni constant, Z^-1 the standard normal quantile, N the number of trials and V the
    variance (ddof 1) of their Sharpe ratios.  ``trial_sharpes`` is one array, or one array per selection run:
    then V is the pooled variance *within* runs (each run's trials around that run's mean, sum of squares over
    sum(n_run) - runs).  The paper's trials all share one sample; in a walk-forward every fold is its own
    sample, and the market of a fold moves every candidate of that fold alike, which is not dispersion between
    trials.  A run is one selection, all its stages: they are ranked on one sample, and how a later stage's
    candidates sit around the earlier winner is dispersion between trials.  One trial (or no dispersion) means
    no selection: SR0 = 0.  SR0 is in the units of the arrays: Sharpe ratios measured on T bars give the SR0 of
    a T-bar record (``deflated_sharpe`` translates to the length of the record it tests).
    """
    groups = [np.asarray(trial_sharpes, dtype=np.float64)] if isinstance(trial_sharpes, np.ndarray) else [
        np.asarray(g, dtype=np.float64) for g in trial_sharpes]
    if not groups or any(g.ndim != 1 or not np.all(np.isfinite(g)) for g in groups):
        raise ValueError("trial Sharpe ratios must be finite 1-d arrays")
    n = sum(len(g) for g in groups)
    dof = n - sum(1 for g in groups if len(g))
    if n == 0:
        raise ValueError("no trials")
    if n == 1 or dof <= 0:
        return 0.0, n
    var = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups if len(g)) / dof
    sr0 = math.sqrt(var) * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n)
                            + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n * math.e)))
    return sr0, n


def probabilistic_sharpe(sr: float, sr0: float, n_obs: int, skew: float, kurtosis: float) -> float:
    """PSR(SR0) = Z((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2)), kurtosis non-excess.

    NaN when the denominator is not positive (a skew so extreme that the approximation breaks down).
    """
    denom = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if n_obs < 2 or not denom > 0:
        return math.nan
    return _NORMAL.cdf((sr - sr0) * math.sqrt(n_obs - 1) / math.sqrt(denom))


@dataclass(frozen=True)
class TrialSharpes:
    """One selection run's trials, pruned ones included: the per-bar Sharpe ratio of each, every one measured on
    the same ``bars`` bars (the run's smallest halving budget)."""

    sharpes: np.ndarray
    bars: int


@dataclass(frozen=True)
class DeflatedSharpe:
    dsr: float  # probability that the true Sharpe ratio exceeds sr0
    sharpe: float  # of the series tested, per bar
    sr0: float  # expected maximum Sharpe ratio of the trials under the null
    skew: float
    kurtosis: float  # non-excess
    n_obs: int
    n_trials: int


def deflated_sharpe(returns: np.ndarray, trials: np.ndarray | Sequence[TrialSharpes]) -> DeflatedSharpe:
    """DSR of ``returns`` (per bar) given the per-bar Sharpe ratios of ALL trials, pruned ones included: one
    array of trials measured on ``returns``' own sample (the paper's setting), or one ``TrialSharpes`` per
    selection run (see expected_max_sharpe).

    A Sharpe ratio measured on T bars spreads by luck alone like 1/sqrt(T - 1): trials ranked on 243 bars
    disperse 2.4 times as much as they would on the 1,440 bars of the record tested, and an SR0 taken from them
    as it is would ask that record for 2.4 times the luck-free Sharpe.  So each run's Sharpe ratios are put on
    one scale, z = SR sqrt(T_run - 1) (the PSR's statistic), SR0 is taken on that scale and brought to the
    record's, SR0 = z0 / sqrt(T - 1): exact when every true Sharpe is 0, which is the hypothesis SR0 describes."""
    mean, std, skew, kurt = moments(returns)
    sr = mean / std if std > 0 else 0.0
    if isinstance(trials, np.ndarray):
        sr0, n_trials = expected_max_sharpe(trials)
    else:
        if not trials or any(t.bars < 2 for t in trials):
            raise ValueError("every selection run's trials need the number of bars (>= 2) they were measured on")
        z0, n_trials = expected_max_sharpe([np.asarray(t.sharpes, dtype=np.float64) * math.sqrt(t.bars - 1)
                                            for t in trials])
        sr0 = z0 / math.sqrt(len(returns) - 1)
    return DeflatedSharpe(probabilistic_sharpe(sr, sr0, len(returns), skew, kurt), sr, sr0, skew, kurt,
                          len(returns), n_trials)


@dataclass(frozen=True)
class CSCV:
    pbo: float  # share of splits whose in-sample best ranks at or below the out-of-sample median (logit <= 0)
    logits: np.ndarray  # one per split: ln(w / (1 - w)), w = out-of-sample rank of the in-sample best / (N + 1)
    n_partitions: int
    rows_used: int  # rows kept (the oldest T mod S rows are dropped so that the S blocks are equal)
    distinct: int  # N: trials with distinct returns (NaN PBO and no logits when fewer than two)


def pbo_cscv(perf: np.ndarray, n_partitions: int = 16) -> CSCV:
    """Probability of backtest overfitting of choosing, among N trials, the one with the best Sharpe ratio.

    ``perf`` is (T, N) per-bar returns of N trials on the same T bars, or (B, T, N): excess returns over B
    benchmarks, and a trial's performance on a set of bars is then its worst Sharpe ratio over the benchmarks
    (the objective's rule).  The T bars are cut into S contiguous blocks; every choice of S/2 blocks is an
    in-sample set and the other S/2 blocks its out-of-sample set (C(S, S/2) splits, each split seen both
    ways).  Per split: the in-sample best (ties: the lowest column), its out-of-sample rank r among the N
    (1 = worst; ties share the mean rank), w = r / (N + 1), logit ln(w / (1 - w)).  PBO = share of logits <= 0.

    Trials whose returns are identical on these bars are one strategy here and count once (the first): a stop
    that never triggers makes a grid of stop levels into copies, and copies tie at the median rank (logit 0),
    which would read as overfitting where there was no choice at all.
    """
    x = np.asarray(perf, dtype=np.float64)
    if x.ndim == 2:
        x = x[None, :, :]
    if x.ndim != 3 or not np.all(np.isfinite(x)):
        raise ValueError("perf must be a finite (T, N) or (B, T, N) array")
    s = int(n_partitions)
    _, t_len, n = x.shape
    if s < 2 or s % 2:
        raise ValueError(f"CSCV needs an even number of partitions >= 2, got {s}")
    if n < 2:
        raise ValueError("CSCV compares at least two trials")
    m = t_len // s
    if m < 2:
        raise ValueError(f"{t_len} bars cannot be cut into {s} blocks of at least 2 bars")
    x = x[:, t_len - m * s:, :]  # keep the most recent S * m bars
    _, first = np.unique(x.transpose(2, 0, 1).reshape(n, -1), axis=0, return_index=True)
    x = x[:, :, np.sort(first)]
    n = x.shape[2]
    if n < 2:
        return CSCV(math.nan, np.empty(0), s, m * s, n)
    # Per block sums of the demeaned returns (demeaning keeps the variance from cancelling): any union of blocks
    # then has its mean and variance from S numbers instead of a pass over its bars.
    col_mean = x.mean(axis=1, keepdims=True)
    d = (x - col_mean).reshape(x.shape[0], s, m, n)
    bsum, bsq = d.sum(axis=2), (d * d).sum(axis=2)  # (B, S, N)
    tol = 1e-9 * np.max(np.abs(x), axis=1)  # (B, N): a deviation below this is rounding, i.e. zero
    half = s // 2
    combos = np.array(list(itertools.combinations(range(s), half)), dtype=np.int64)
    w = _split_ranks(bsum, bsq, bsum.sum(axis=1), bsq.sum(axis=1), col_mean[:, 0, :], tol, combos, half * m)
    logits = np.log(w / (1 - w))
    return CSCV(float(np.mean(logits <= 0)), logits, s, m * s, n)


@njit(cache=True)
def _split_ranks(bsum: np.ndarray, bsq: np.ndarray, total_sum: np.ndarray, total_sq: np.ndarray,
                 col_mean: np.ndarray, tol: np.ndarray, combos: np.ndarray, k: int) -> np.ndarray:
    """Per split: the in-sample best's out-of-sample rank among the N, over N + 1.

    One pass per split over (B, N) numbers, in the order the array version added them (so the same bits):
    a union's sums are its blocks' sums added in block order, the out-of-sample ones the totals minus those.
    This loop was most of an optimizer run's CPU as numpy temporaries (12,870 splits x N x B, four times over).
    """
    n_b, _, n = bsum.shape
    out = np.empty(len(combos))
    is_perf, oos_perf = np.empty(n), np.empty(n)
    for c in range(len(combos)):
        idx = combos[c]
        for j in range(n):
            worst_is, worst_oos = np.inf, np.inf
            for b in range(n_b):
                is_sum, is_sq = bsum[b, idx[0], j], bsq[b, idx[0], j]
                for q in range(1, len(idx)):
                    is_sum += bsum[b, idx[q], j]
                    is_sq += bsq[b, idx[q], j]
                v_is = _union_sharpe(is_sum, is_sq, k, col_mean[b, j], tol[b, j])
                v_oos = _union_sharpe(total_sum[b, j] - is_sum, total_sq[b, j] - is_sq, k, col_mean[b, j], tol[b, j])
                worst_is, worst_oos = min(worst_is, v_is), min(worst_oos, v_oos)
            is_perf[j], oos_perf[j] = worst_is, worst_oos
        best = 0  # first maximum: the lowest column wins ties
        for j in range(1, n):
            if is_perf[j] > is_perf[best]:
                best = j
        chosen, below, equal = oos_perf[best], 0, 0
        for j in range(n):
            below += oos_perf[j] < chosen
            equal += oos_perf[j] == chosen
        out[c] = (below + (equal + 1) / 2.0) / (n + 1)
    return out


@njit(cache=True)
def _union_sharpe(dsum: float, dsq: float, k: int, col_mean: float, tol: float) -> float:
    """Sharpe ratio (ddof 1) of k bars from the sums of their demeaned values and squares (0 below ``tol``)."""
    dmean = dsum / k
    sd = math.sqrt(max(dsq - k * dmean * dmean, 0.0) / (k - 1))
    return (dmean + col_mean) / sd if sd > tol else 0.0


def spa_pvalue(strategy: np.ndarray, benchmark: np.ndarray, reps: int = 2000, block_size: int | None = None,
               seed: int = 0) -> float:
    """Hansen's SPA p-value (the "consistent" one) of H0: no strategy beats the benchmark.

    ``strategy`` is (T,) or (T, k) per-bar returns, ``benchmark`` (T,) on the same bars; losses are negative
    returns, so the loss differential is the excess return (spa_excess_pvalue).
    """
    s = np.asarray(strategy, dtype=np.float64)
    b = np.asarray(benchmark, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if b.ndim != 1 or s.shape[0] != b.shape[0] or s.shape[0] < 2:
        raise ValueError(f"strategy {s.shape} and benchmark {b.shape} are not on the same bars")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(b))):
        raise ValueError("SPA needs finite returns")
    scale = max(float(np.max(np.abs(s))), float(np.max(np.abs(b))), 1e-300)
    return spa_excess_pvalue(s - b[:, None], reps, block_size, seed, scale)


def spa_excess_pvalue(excess: np.ndarray, reps: int = 2000, block_size: int | None = None, seed: int = 0,
                      scale: float | None = None) -> float:
    """Hansen's SPA p-value (the "consistent" one) that the best of k models does not beat the benchmark.

    ``excess`` is (T,) or (T, k): each model's per-bar return minus the benchmark's on the same T bars, which is
    arch's loss differential (benchmark loss - model loss, losses being negative returns).  This is the
    data-snooping test proper when the k columns are every model the search compared: the bootstrap takes the
    maximum over all k, so each extra candidate raises the bar the best one must clear.

    Studentized, as Hansen (2005) defines the statistic: each column is divided by its long-run standard
    deviation (his kernel estimate with the stationary bootstrap's weights, ``hac_variance``) before arch runs the
    test.  arch 8.0's ``SPA.compute`` compares raw means (its variances only choose the columns to recentre), which
    is White's Reality Check: among trials of unequal volatility the most volatile would decide the p-value.  On
    the scaled columns arch's raw maximum is Hansen's max of d_k / omega_k, its bootstrap maxima the studentized
    ones, and its recentring rule (mean >= -sqrt(var / T * 2 log log T)) unchanged, since it is scale-free.

    Stationary bootstrap with ``block_size`` (None: arch's default, int(sqrt(T))) and a fixed seed, so the same
    inputs give the same p-value.  Identical columns are kept once: the bootstrap indices depend on T only and
    every model's statistics on its own column, so a copy changes no maximum, only the cost.  A column constant
    over time (up to 1e-12 x ``scale``, default the largest absolute excess) has no deviation to divide by: a
    constant lead is an edge no bootstrap can shake (p = 0), a constant tie or loss can never be the superior
    model and is left out (all of them: p = 1, where arch, counting maxima strictly above the observed one, would
    call a strategy identical to its benchmark "significantly better").
    """
    from arch.bootstrap import SPA  # imported here: arch (with pandas, scipy) is only needed by the gate

    diff = np.asarray(excess, dtype=np.float64)
    if diff.ndim == 1:
        diff = diff[:, None]
    if diff.ndim != 2 or diff.shape[0] < 2 or diff.shape[1] < 1:
        raise ValueError(f"SPA needs a (T >= 2, k >= 1) excess matrix, got {diff.shape}")
    if not np.all(np.isfinite(diff)):
        raise ValueError("SPA needs finite returns")
    if scale is None:
        scale = max(float(np.max(np.abs(diff))), 1e-300)
    tol = 1e-12 * scale
    flat = np.ptp(diff, axis=0) <= tol  # constant up to rounding
    if np.any(flat & (np.mean(diff, axis=0) > tol)):
        return 0.0
    diff = diff[:, ~flat]
    if diff.shape[1] == 0:
        return 1.0
    _, first = np.unique(diff.T, axis=0, return_index=True)
    diff = diff[:, np.sort(first)]
    block = int(block_size) if block_size is not None else int(np.sqrt(diff.shape[0]))
    var = hac_variance(diff, block)
    # The kernel estimate is positive in practice; where rounding makes it not, the plain variance stands in.
    var = np.where(var > 0, var, np.var(diff, axis=0))
    scaled = np.ascontiguousarray(diff / np.sqrt(var))
    # benchmark loss 0, model losses -excess: arch's loss differential 0 - (-excess) is the excess, bit for bit
    test = SPA(np.zeros(scaled.shape[0]), -scaled, block_size=block, reps=reps, seed=seed)
    test.compute()
    return float(test.pvalues["consistent"])


def hac_variance(diff: np.ndarray, block_size: int) -> np.ndarray:
    """(k,) long-run variance of each column of (T, k) ``diff``: Hansen (2005) eq. (5), the kernel of the
    stationary bootstrap with mean block length ``block_size`` (what arch computes for its recentring rule)."""
    t = diff.shape[0]
    q = 1.0 / block_size
    d = diff - diff.mean(axis=0)
    var = np.einsum("tk,tk->k", d, d) / t
    for i in range(1, t):
        kappa = (1.0 - i / t) * (1.0 - q) ** i + (i / t) * (1.0 - q) ** (t - i)
        var += 2.0 * kappa * np.einsum("tk,tk->k", d[: t - i], d[i:]) / t
    return var
