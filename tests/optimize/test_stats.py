"""The gate's statistics, each against a case computed by hand (the arithmetic is written out)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from aura.optimize.stats import (
    EULER_GAMMA,
    TrialSharpes,
    deflated_sharpe,
    expected_max_sharpe,
    moments,
    pbo_cscv,
    spa_excess_pvalue,
    spa_pvalue,
)

# --- Deflated Sharpe Ratio ------------------------------------------------------------------------------------
# PSR(SR0) = Z((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)), kurt NOT excess;
# SR0 = sqrt(V) ((1 - g) Z^-1(1 - 1/N) + g Z^-1(1 - 1/(N e))), V = variance (ddof 1) of the trials' Sharpes.


def test_moments_are_population_moments_with_non_excess_kurtosis() -> None:
    # x = 0, 0, 0, 0.04: mean 0.01, deviations -0.01 (x3), +0.03
    # m2 = (3 * 1e-4 + 9e-4) / 4 = 3e-4;  m3 = (3 * -1e-6 + 27e-6) / 4 = 6e-6;  m4 = (3 * 1e-8 + 81e-8) / 4 = 21e-8
    # skew = m3 / m2^1.5 = 6e-6 / (3e-4)^1.5 = 2 / sqrt(3);  kurt = m4 / m2^2 = 21e-8 / 9e-8 = 7 / 3
    # sample sd (ddof 1) = sqrt(12e-4 / 3) = 0.02
    mean, sd, skew, kurt = moments(np.array([0.0, 0.0, 0.0, 0.04]))
    assert mean == pytest.approx(0.01)
    assert sd == pytest.approx(0.02)
    assert skew == pytest.approx(2 / math.sqrt(3))
    assert kurt == pytest.approx(7 / 3)
    assert moments(np.random.default_rng(0).normal(size=200_000))[3] == pytest.approx(3.0, abs=0.05)  # normal: 3


def test_dsr_single_trial_with_skew_and_kurtosis() -> None:
    # One trial: no selection, SR0 = 0.  SR = 0.01 / 0.02 = 0.5, T = 4.
    # denominator = 1 - (2/sqrt(3)) * 0.5 + (7/3 - 1) / 4 * 0.25 = 1 - 0.577350 + 0.083333 = 0.505983
    # z = 0.5 * sqrt(3) / sqrt(0.505983) = 0.866025 / 0.711325 = 1.217481;  Z(1.217481) = 0.888290
    d = deflated_sharpe(np.array([0.0, 0.0, 0.0, 0.04]), np.array([0.2]))
    assert d.sr0 == 0.0 and d.n_trials == 1 and d.n_obs == 4
    assert d.sharpe == pytest.approx(0.5)
    assert d.dsr == pytest.approx(0.888290, abs=1e-6)


def test_dsr_two_trials_symmetric_returns() -> None:
    # Returns -0.01, 0, 0.01, 0.02, 0.03: mean 0.01, deviations -2,-1,0,1,2 (x 0.01), skew 0.
    # sd (ddof 1) = sqrt(10e-4 / 4) = 0.0158114, SR = 0.632456; m2 = 2e-4, m4 = 34e-8 / 5 = 6.8e-8, kurt = 1.7.
    # Trials 0.1, 0.3: V = ((-0.1)^2 + 0.1^2) / 1 = 0.02, sqrt(V) = 0.141421, N = 2:
    #   Z^-1(1 - 1/2) = 0, Z^-1(1 - 1/(2e)) = Z^-1(0.816060) = 0.900453
    #   SR0 = 0.141421 * (0.422784 * 0 + 0.577216 * 0.900453) = 0.073505
    # denominator = 1 - 0 + (1.7 - 1) / 4 * 0.4 = 1.07
    # z = (0.632456 - 0.073505) * sqrt(4) / sqrt(1.07) = 1.117902 / 1.034408 = 1.080717;  Z(z) = 0.860088
    d = deflated_sharpe(np.array([-0.01, 0.0, 0.01, 0.02, 0.03]), np.array([0.1, 0.3]))
    assert d.kurtosis == pytest.approx(1.7)
    assert d.sr0 == pytest.approx(0.073505, abs=1e-6)
    assert d.dsr == pytest.approx(0.860088, abs=1e-6)
    # With EXCESS kurtosis (-1.3) in place of 1.7 the denominator would be 1 + (-1.3 - 1)/4 * 0.4 = 0.77 and the
    # DSR 0.898663: the test pins the non-excess form.
    assert abs(d.dsr - 0.898663) > 0.03


def test_expected_max_sharpe_pools_variance_within_runs() -> None:
    # Runs [0.1, 0.3] and [1.0, 1.2, 1.1]: within-run sums of squares 0.02 and 0.02, dof = 5 - 2 = 3,
    # V = 0.04 / 3 = 0.013333 (the runs' different means are not dispersion), N = 5 (every trial counts):
    #   Z^-1(1 - 1/5) = 0.841621, Z^-1(1 - 1/(5e)) = Z^-1(0.926424) = 1.449666
    #   SR0 = 0.115470 * (0.422784 * 0.841621 + 0.577216 * 1.449666) = 0.115470 * 1.192597 = 0.137709
    sr0, n = expected_max_sharpe([np.array([0.1, 0.3]), np.array([1.0, 1.2, 1.1])])
    assert n == 5
    assert sr0 == pytest.approx(0.137709, abs=2e-6)
    g = EULER_GAMMA
    assert sr0 == pytest.approx(math.sqrt(0.04 / 3) * ((1 - g) * 0.8416212 + g * 1.4496657), rel=1e-6)
    assert expected_max_sharpe(np.array([0.4]))[0] == 0.0  # one trial: nothing was selected


def test_trials_ranked_on_fewer_bars_are_brought_to_the_length_of_the_record() -> None:
    # The record of test_dsr_two_trials_symmetric_returns (T = 5, SR 0.632456, denominator 1.07), its trials 0.1 and
    # 0.3 measured on 2 bars: z = SR sqrt(2 - 1) = 0.1, 0.3, V_z = 0.02, z0 = 0.141421 * 0.519762 = 0.073505,
    # SR0 = z0 / sqrt(5 - 1) = 0.036753 (measured on the record's 5 bars the trials' SR0 would be 0.073505).
    # z = (0.632456 - 0.036753) * 2 / sqrt(1.07) = 1.191406 / 1.034408 = 1.151776;  Z(z) = 0.875293
    rets = np.array([-0.01, 0.0, 0.01, 0.02, 0.03])
    d = deflated_sharpe(rets, [TrialSharpes(np.array([0.1, 0.3]), 2)])
    assert d.sr0 == pytest.approx(0.036753, abs=1e-6) and d.n_trials == 2
    assert d.dsr == pytest.approx(0.875293, abs=1e-6)
    same = deflated_sharpe(rets, [TrialSharpes(np.array([0.1, 0.3]), 5)])  # measured on the record's length
    assert same.sr0 == pytest.approx(deflated_sharpe(rets, np.array([0.1, 0.3])).sr0, rel=1e-12)
    # Runs on different lengths: [0.1, 0.3] on 5 bars -> z 0.2, 0.6; [0.05, 0.15] on 17 bars -> z 0.2, 0.6:
    # both the same dispersion in z (within-run sums of squares 0.08, 0.08; V_z = 0.16 / 2 = 0.08), N = 4.
    mixed = deflated_sharpe(rets, [TrialSharpes(np.array([0.1, 0.3]), 5), TrialSharpes(np.array([0.05, 0.15]), 17)])
    z0, n = expected_max_sharpe([np.array([0.2, 0.6]), np.array([0.2, 0.6])])
    assert n == 4 and mixed.sr0 == pytest.approx(z0 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="number of bars"):
        deflated_sharpe(rets, [TrialSharpes(np.array([0.1, 0.3]), 1)])


def test_luck_alone_does_not_pass_a_longer_record() -> None:
    """Pure noise: 300 trials of zero true Sharpe on 243 bars, the best's record on 1,440.  The expected best by
    luck on 1,440 bars is about 2.8 / sqrt(1439) = 0.074 per bar: SR0 must be close to it, not to the 0.18 the
    243-bar dispersion would give (the DSR then asked a genuine record for 2.4 times its luck-free Sharpe)."""
    rng = np.random.default_rng(3)
    trials = rng.normal(0, 0.01, (300, 243))
    sharpes = trials.mean(axis=1) / trials.std(axis=1, ddof=1)
    luck = np.max(rng.normal(0, 0.01, (300, 1440)).mean(axis=1) / 0.01)
    d = deflated_sharpe(rng.normal(0.0, 0.01, 1440), [TrialSharpes(sharpes, 243)])
    assert d.sr0 == pytest.approx(luck, rel=0.25), (d.sr0, luck)
    assert deflated_sharpe(rng.normal(0.0, 0.01, 1440), sharpes).sr0 > 2 * d.sr0  # the unscaled SR0


def test_more_trials_deflate_more() -> None:
    rets = np.random.default_rng(1).normal(0.002, 0.01, 500)
    few = deflated_sharpe(rets, np.linspace(-0.05, 0.05, 10)).dsr
    many = deflated_sharpe(rets, np.linspace(-0.05, 0.05, 1000)).dsr
    assert many < few


# --- PBO by CSCV -----------------------------------------------------------------------------------------------


def test_pbo_hand_computed_two_blocks() -> None:
    # S = 2 blocks of 2 bars, N = 3 trials; the Sharpe of two returns (a, b) is ((a+b)/2) / (|a-b|/sqrt 2).
    #            block 0 rows     SR          block 1 rows     SR
    #   A        3, 1       2/1.414 = 1.414   -1, 1           0
    #   B        1, 0       0.5/0.707 = 0.707  2, 1     1.5/0.707 = 2.121
    #   C        1, -0.5    0.25/1.061 = 0.236 1, 0     0.5/0.707 = 0.707
    # Split 1 (IS block 0): best A (1.414); out of sample A has 0, the worst of (0, 2.121, 0.707): rank 1,
    #   w = 1/4, logit ln(0.25/0.75) = -1.098612.
    # Split 2 (IS block 1): best B (2.121); out of sample B has 0.707 among (1.414, 0.707, 0.236): rank 2,
    #   w = 2/4, logit 0 (the median counts as overfit: logit <= 0).
    # PBO = 2 / 2 = 1.
    perf = np.array([[3.0, 1.0, 1.0], [1.0, 0.0, -0.5], [-1.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    r = pbo_cscv(perf, n_partitions=2)
    assert r.logits == pytest.approx([math.log(1 / 3), 0.0])
    assert r.pbo == 1.0
    assert r.rows_used == 4


def test_pbo_zero_when_one_trial_dominates_everywhere() -> None:
    # B beats A on every block: it is the in-sample best of every split and out-of-sample best too:
    # rank N = 2, w = 2/3, logit ln 2 > 0 for each of the C(4, 2) = 6 splits; PBO 0.
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 0.01, 40)
    b = a + 0.01 + rng.normal(0.0, 0.001, 40)
    r = pbo_cscv(np.column_stack([a, b]), n_partitions=4)
    assert len(r.logits) == 6
    assert r.logits == pytest.approx([math.log(2)] * 6)
    assert r.pbo == 0.0


def _sharpe(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=-2, ddof=1)
    return np.where(sd > 0, x.mean(axis=-2) / np.where(sd > 0, sd, 1), 0.0)


def test_pbo_matches_a_direct_computation_with_benchmarks() -> None:
    """The block-sum shortcut equals recomputing every split from its bars, with the worst-of-benchmarks rule."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0005, 0.01, (2, 61, 5))  # 61 bars: the oldest one is dropped for 6 blocks of 10
    r = pbo_cscv(x, n_partitions=6)
    y = x[:, 1:, :].reshape(2, 6, 10, 5)
    logits = []
    for ins in itertools.combinations(range(6), 3):
        outs = [k for k in range(6) if k not in ins]
        is_perf = _sharpe(y[:, list(ins)].reshape(2, 30, 5)).min(axis=0)
        oos = _sharpe(y[:, outs].reshape(2, 30, 5)).min(axis=0)
        best = int(np.argmax(is_perf))
        rank = (oos < oos[best]).sum() + ((oos == oos[best]).sum() + 1) / 2
        logits.append(math.log(rank / 6 / (1 - rank / 6)))
    assert r.rows_used == 60
    assert r.logits == pytest.approx(logits)
    assert r.pbo == pytest.approx(np.mean(np.array(logits) <= 0))


def test_identical_trials_count_once_in_cscv() -> None:
    # The hand-computed case with a copy of A and two copies of C: copies are one strategy, the logits are the same.
    perf = np.array([[3.0, 1.0, 1.0], [1.0, 0.0, -0.5], [-1.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    copies = pbo_cscv(perf[:, [0, 1, 0, 2, 2]], n_partitions=2)
    assert copies.distinct == 3
    assert copies.logits == pytest.approx([math.log(1 / 3), 0.0])
    same = pbo_cscv(np.column_stack([perf[:, 0]] * 3), n_partitions=2)
    assert same.distinct == 1 and math.isnan(same.pbo) and len(same.logits) == 0


def test_pbo_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="even"):
        pbo_cscv(np.zeros((40, 3)), n_partitions=3)
    with pytest.raises(ValueError, match="blocks"):
        pbo_cscv(np.zeros((20, 3)), n_partitions=16)
    with pytest.raises(ValueError, match="finite"):
        pbo_cscv(np.full((40, 3), np.nan), n_partitions=4)
    with pytest.raises(ValueError, match="two trials"):
        pbo_cscv(np.zeros((40, 1)), n_partitions=4)


# --- Hansen's SPA ------------------------------------------------------------------------------------------------


def test_spa_identical_to_benchmark_is_not_superior() -> None:
    bench = np.random.default_rng(11).normal(0.0005, 0.01, 500)
    assert spa_pvalue(bench.copy(), bench, reps=500, seed=1) == 1.0


def test_spa_large_positive_excess_is_superior_and_noise_is_not() -> None:
    rng = np.random.default_rng(12)
    bench = rng.normal(0.0005, 0.01, 500)
    better = bench + rng.normal(0.003, 0.01, 500)  # +0.3% a bar, t-stat about 6.7
    noise = bench + rng.normal(0.0, 0.01, 500)  # same mean as the benchmark
    p_better = spa_pvalue(better, bench, reps=1000, seed=5)
    p_noise = spa_pvalue(noise, bench, reps=1000, seed=5)
    assert p_better <= 0.01
    assert p_noise > 0.2
    assert spa_pvalue(better, bench, reps=1000, seed=5) == p_better  # seeded: deterministic


def test_spa_constant_lead_is_decided_without_bootstrap() -> None:
    bench = np.random.default_rng(13).normal(0.0, 0.01, 100)
    assert spa_pvalue(bench + 0.001, bench) == 0.0
    assert spa_pvalue(bench - 0.001, bench) == 1.0


def _spa_by_hand(excess: np.ndarray, block: int, reps: int, seed: int) -> float:
    """Hansen's consistent SPA p-value written out: the same stationary-bootstrap indices as arch draws (they depend
    on T and the seed only), the kernel variance of Hansen (2005, eq. (5) with the stationary bootstrap's
    weights), the log-log threshold that drops clearly inferior models from the recentring, and the share of
    bootstrap maxima of the studentized means, d*_k / omega_k, strictly above the observed best d_k / omega_k."""
    from arch.bootstrap import StationaryBootstrap

    t, k = excess.shape
    means = excess.mean(axis=0)
    q = 1.0 / block
    var = np.empty(k)
    for j in range(k):
        d = excess[:, j] - means[j]
        v = float(np.sum(d * d)) / t
        for i in range(1, t):
            kappa = (1 - i / t) * (1 - q) ** i + (i / t) * (1 - q) ** (t - i)
            v += 2 * kappa * float(np.dot(d[: t - i], d[i:])) / t
        var[j] = v
    keep = means >= -np.sqrt(var / t * 2 * np.log(np.log(t)))
    omega = np.sqrt(var)
    # Each column scaled first, as the statistic's ratio; the same arithmetic order as on scaled data.
    z = excess / omega
    z_means, z_centre = z.mean(axis=0), np.where(keep, z.mean(axis=0), 0.0)
    above = 0
    for (idx,), _ in StationaryBootstrap(block, np.arange(t), seed=seed).bootstrap(reps):
        above += max(float(np.mean(z[idx, j])) - z_centre[j] for j in range(k)) > z_means.max()
    return above / reps


def test_multi_model_spa_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(21)
    t = 40
    # one model with an edge, one with none, one clearly worse (left out of the recentring), and a copy of the
    # first (a copy changes nothing: it is dropped before the bootstrap)
    edge, none, worse = rng.normal(0.002, 0.01, t), rng.normal(0.0, 0.01, t), rng.normal(-0.01, 0.01, t)
    excess = np.column_stack([edge, none, worse, edge])
    expected = _spa_by_hand(excess[:, :3], block=5, reps=400, seed=3)
    assert 0.0 < expected < 1.0  # a case the bootstrap decides, not a corner
    assert spa_excess_pvalue(excess, reps=400, block_size=5, seed=3) == pytest.approx(expected, abs=1e-12)
    assert spa_excess_pvalue(excess[:, :3], reps=400, block_size=5, seed=3) == pytest.approx(expected, abs=1e-12)
    bench = rng.normal(0.0, 0.01, t)  # the returns form: the same excess, the same p-value
    assert spa_pvalue(excess + bench[:, None], bench, reps=400, block_size=5, seed=3) == pytest.approx(expected,
                                                                                                        abs=1e-9)


def test_the_spa_is_studentized_so_volatile_noise_does_not_decide_it() -> None:
    """A trial with a real edge (t-stat about 4) among 50 trials of no edge and ten times its volatility: by raw
    means (White's Reality Check, arch's compute) the noisy trials' bootstrap maxima swamp it; Hansen's
    studentized statistic still finds it superior."""
    rng = np.random.default_rng(23)
    t = 250
    edge = rng.normal(0.0, 0.01, t)
    edge += 0.0025 - edge.mean()
    noise = rng.normal(0.0, 0.1, (t, 50))
    noise -= noise.mean(axis=0)
    assert spa_excess_pvalue(edge, reps=1000, seed=0) <= 0.01
    assert spa_excess_pvalue(np.column_stack([edge, noise]), reps=1000, seed=0) <= 0.05


def test_many_noise_trials_raise_the_p_value_of_a_lucky_best() -> None:
    """The multiple-testing effect: the best trial alone looks superior; searched among 400 trials of the same
    volatility and no edge it is what the best of a search finds by luck, and the SPA says so."""
    rng = np.random.default_rng(22)
    t = 250
    lucky = rng.normal(0.0, 0.01, t)
    lucky += 0.0015 - lucky.mean()  # an in-sample mean excess of 0.15%/bar: t-stat about 2.4
    noise = rng.normal(0.0, 0.01, (t, 400))
    noise -= noise.mean(axis=0)  # no edge in sample either: the lucky trial stays the best one
    alone = spa_excess_pvalue(lucky, reps=1000, seed=0)
    few = spa_excess_pvalue(np.column_stack([lucky, noise[:, :10]]), reps=1000, seed=0)
    searched = spa_excess_pvalue(np.column_stack([lucky, noise]), reps=1000, seed=0)
    assert alone <= 0.01
    assert alone < few < searched
    assert searched > 0.5
