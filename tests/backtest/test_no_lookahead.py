"""No lookahead: change everything after bar t and nothing up to t may change (decisions, fills, equity)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura.backtest.data import default_rules
from aura.backtest.engine import BacktestConfig, run_reference
from aura.backtest.fast import Market, run_fast
from aura.strategy.indicators import KIND_NAMES, indicator_tensor
from aura.strategy.params import StrategyParams
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import Panel

DAY = timeframe_ms("1d")
PARAMS = StrategyParams(kill_switch_drawdown=0.4, stop_loss=0.1, take_profit=0.4, min_quote_volume=0.0,
                        momentum_lookback=20, momentum_long_lookback=40, min_history=40, sma_length=20,
                        drawdown_window=40, vol_window=20, regime_sma=30, vote_step=2)


@pytest.fixture(scope="module")
def window(panel_1d: Panel) -> Panel:
    """13 real symbols over 2021-2022 (a bull top, a crash, new listings)."""
    cols = [panel_1d.symbols.index(s) for s in ("ADA_USDT", "AVAX_USDT", "BNB_USDT", "BTC_USDT", "DOGE_USDT",
                                                 "DOT_USDT", "ETH_USDT", "ICP_USDT", "LINK_USDT", "MATIC_USDT",
                                                 "SHIB_USDT", "SOL_USDT", "XRP_USDT")]
    rows = slice(1230, 1630)
    return Panel(tuple(panel_1d.symbols[c] for c in cols), panel_1d.timestamps[rows],
                 *(np.ascontiguousarray(getattr(panel_1d, f)[rows][:, cols]) for f in
                   ("open", "high", "low", "close", "volume")))


def perturb_after(panel: Panel, t: int, seed: int) -> Panel:
    """Every candle after t replaced by another valid candle (random walk, random volume); nothing before."""
    rng = np.random.default_rng(seed)
    cols = {f: getattr(panel, f).copy() for f in ("open", "high", "low", "close", "volume")}
    valid = ~np.isnan(panel.close[t + 1:])
    factor = np.exp(rng.normal(0, 0.3, valid.shape))
    for f in ("open", "close"):
        cols[f][t + 1:] = np.where(valid, panel.close[t + 1:] * factor * rng.uniform(0.9, 1.1, valid.shape), np.nan)
    cols["high"][t + 1:] = np.fmax(cols["open"][t + 1:], cols["close"][t + 1:]) * rng.uniform(1, 1.2, valid.shape)
    cols["low"][t + 1:] = np.fmin(cols["open"][t + 1:], cols["close"][t + 1:]) * rng.uniform(0.8, 1, valid.shape)
    cols["volume"][t + 1:] = np.where(valid, rng.uniform(0, 1e9, valid.shape), np.nan)
    return Panel(panel.symbols, panel.timestamps, **cols)


def _until(res, t: int):  # type: ignore[no-untyped-def]
    i = t - res.first_bar + 1
    return ([r for r in res.trades.rows() if r[0] <= t], res.equity[:i].tolist(), res.cash[:i].tolist(),
            res.regime[:i].tolist())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(60, 390), seed=st.integers(0, 2**31), fill=st.sampled_from(["open", "close"]))
def test_fast_backtest_up_to_t_ignores_the_future(window: Panel, t: int, seed: int, fill: str) -> None:
    rules = default_rules(window).rules
    cfg = BacktestConfig(bar_ms=DAY, start=50, fill_at=fill)
    base = run_fast(Market.build(window, rules), PARAMS, cfg)
    other = run_fast(Market.build(perturb_after(window, t, seed), rules), PARAMS, cfg)
    assert _until(base, t) == _until(other, t)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(60, 170), seed=st.integers(0, 2**31))
def test_reference_backtest_up_to_t_ignores_the_future(window: Panel, t: int, seed: int) -> None:
    rules = default_rules(window).rules
    cfg = BacktestConfig(bar_ms=DAY, start=50, end=180)
    base, _ = run_reference(window, PARAMS, cfg, rules)
    other, _ = run_reference(perturb_after(window, t, seed), PARAMS, cfg, rules)
    assert _until(base, t) == _until(other, t)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.integers(0, 398), seed=st.integers(0, 2**31), kind=st.sampled_from(range(len(KIND_NAMES))),
       n=st.integers(1, 60))
def test_indicator_tensors_up_to_t_ignore_the_future(window: Panel, t: int, seed: int, kind: int, n: int) -> None:
    other = perturb_after(window, t, seed)
    a = indicator_tensor(kind, window.close, window.volume, n)[: t + 1]
    b = indicator_tensor(kind, other.close, other.volume, n)[: t + 1]
    np.testing.assert_array_equal(a, b)


def test_the_perturbation_really_changes_the_future(window: Panel) -> None:
    """Guard against a vacuous property: after t the runs must differ."""
    rules = default_rules(window).rules
    cfg = BacktestConfig(bar_ms=DAY, start=50)
    base = run_fast(Market.build(window, rules), PARAMS, cfg)
    other = run_fast(Market.build(perturb_after(window, 200, 1), rules), PARAMS, cfg)
    assert len(base.trades) > 10
    assert base.trades.rows() != other.trades.rows() and not np.array_equal(base.equity, other.equity)
