"""Indicators against plain numpy definitions, NaN handling, and the at-bar == tensor identity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aura.strategy import indicators as ind


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (120, 3)), axis=0))
    close[:30, 2] = np.nan  # a late listing
    close[70, 1] = np.nan  # a gap
    volume = rng.uniform(1e3, 1e4, close.shape)
    return close, volume


def test_momentum_sma_trend_drawdown_match_numpy(data: tuple[np.ndarray, np.ndarray]) -> None:
    close, volume = data
    t, j, n = 100, 0, 20
    c = close[:, j]
    assert ind.momentum_at(close, t, j, n) == pytest.approx(c[t] / c[t - n] - 1, rel=1e-12)
    assert ind.sma_at(close, t, j, n) == pytest.approx(c[t - n + 1:t + 1].mean(), rel=1e-12)
    assert ind.trend_at(close, t, j, n) == pytest.approx(c[t] / c[t - n + 1:t + 1].mean() - 1, rel=1e-12)
    assert ind.drawdown_at(close, t, j, n) == pytest.approx(1 - c[t] / c[t - n + 1:t + 1].max(), rel=1e-12)
    qv = (close[t - n + 1:t + 1, j] * volume[t - n + 1:t + 1, j]).mean()
    assert ind.quote_volume_at(close, volume, t, j, n) == pytest.approx(qv, rel=1e-12)


def test_an_unknown_volume_is_left_out_of_the_quote_volume_never_counted_as_failure(
        data: tuple[np.ndarray, np.ndarray]) -> None:
    """A fallback candle (CoinGecko) has no volume: the mean is over the bars whose volume is known, and only a
    window mostly unknown (or a negative volume, or a bad close) gives no figure."""
    close, volume = data
    t, j, n = 90, 1, 10
    holed = volume.copy()
    holed[t, j] = np.nan  # the decision bar filled by the fallback
    known = (close[t - n + 1:t, j] * volume[t - n + 1:t, j]).mean()
    assert ind.quote_volume_at(close, holed, t, j, n) == pytest.approx(known, rel=1e-12)
    holed[t - n + 1:t - 4, j] = np.nan  # 6 of 10 unknown
    assert math.isnan(ind.quote_volume_at(close, holed, t, j, n))
    negative = volume.copy()
    negative[t - 2, j] = -1.0
    assert math.isnan(ind.quote_volume_at(close, negative, t, j, n))


def test_volatility_and_vol_adjusted_return_match_numpy(data: tuple[np.ndarray, np.ndarray]) -> None:
    close, _ = data
    t, j, n = 90, 0, 25
    r = np.diff(np.log(close[t - n:t + 1, j]))
    assert ind.volatility_at(close, t, j, n) == pytest.approx(r.std(), rel=1e-10)
    expected = math.log(close[t, j] / close[t - n, j]) / (r.std() * math.sqrt(n))
    assert ind.vol_adj_at(close, t, j, n) == pytest.approx(expected, rel=1e-10)


def test_incomplete_windows_are_nan_never_filled(data: tuple[np.ndarray, np.ndarray]) -> None:
    close, volume = data
    assert math.isnan(ind.sma_at(close, 10, 0, 20))  # not enough bars yet
    assert math.isnan(ind.sma_at(close, 40, 2, 20))  # listed at 30: window reaches before the listing
    assert not math.isnan(ind.sma_at(close, 49, 2, 20))
    for kind in range(len(ind.KIND_NAMES)):  # the gap at 70 poisons every window that contains it...
        value = ind.indicator_at(kind, close, volume, 75, 1, 10)
        assert math.isnan(value) == (kind != ind.MOMENTUM), ind.KIND_NAMES[kind]
    # ...except momentum, which only reads its two end points: NaN only when one of them is missing
    assert math.isnan(ind.momentum_at(close, 80, 1, 10)) and math.isnan(ind.momentum_at(close, 70, 1, 5))


def test_history_counts_valid_closes(data: tuple[np.ndarray, np.ndarray]) -> None:
    close, _ = data
    assert ind.history_ok(close, 59, 2, 30) and not ind.history_ok(close, 58, 2, 30)
    assert ind.history_ok(close, 80, 1, 80) and not ind.history_ok(close, 80, 1, 81)  # the gap does not count
    elig = ind.eligible_tensor(close, 30)
    assert elig[59, 2] and not elig[58, 2] and not elig[70, 1]  # no close at 70: not eligible that bar


@pytest.mark.parametrize("kind", range(len(ind.KIND_NAMES)))
def test_tensor_is_the_at_bar_function_and_causal(kind: int, data: tuple[np.ndarray, np.ndarray]) -> None:
    close, volume = data
    full = ind.indicator_tensor(kind, close, volume, 12)
    prefix = ind.indicator_tensor(kind, close[:80].copy(), volume[:80].copy(), 12)
    # bit-identical: the fast backtester relies on it
    np.testing.assert_array_equal(full[:80], prefix)
    assert np.array_equal(full[64, :], np.array([ind.indicator_at(kind, close, volume, 64, j, 12)
                                                 for j in range(3)]), equal_nan=True)
