"""One source of truth: the numba fast path must trade exactly like the reference path, which calls the
live decision functions (compute_targets, risk_plan) bar by bar.  Real data, several parameter sets."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from aura.backtest.data import default_rules, last_valid_index, load_panel
from aura.backtest.engine import BacktestConfig, run_reference
from aura.backtest.fast import Market, SignalCache, run_fast
from aura.strategy.params import StrategyParams, validate_params
from aura.strategy.rebalance import REASONS
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule, Panel

DAY = timeframe_ms("1d")

PARAM_SETS = {
    # the shipped defaults: the kill-switch latches in 2018
    "defaults": StrategyParams(),
    # no kill-switch: seven years of rotation, stops, trims, cost-benefit holds
    "no_kill": StrategyParams(kill_switch_drawdown=1.0),
    # every alternative code path at once
    "zscore_kelly_tp": StrategyParams(
        kill_switch_drawdown=1.0, normalization=1, weighting=1, sizing=1, kelly_fraction=0.8, take_profit=0.3,
        stop_loss=0.08, vote_offsets=4, vote_step=2, rebalance_every=3, regime_confirm=1, top_k=5,
        exposure_sideways=0.8, exposure_bear=0.3, min_quote_volume=0.0, rebalance_band=0.0, cash_buffer=0.01),
    "inverse_vol_slow": StrategyParams(
        kill_switch_drawdown=0.5, kill_switch_window=30, weighting=1, momentum_lookback=60,
        momentum_long_lookback=180, sma_length=100, min_history=120, screen_min_momentum=0.1,
        cost_benefit_margin=3.0, rebalance_every=7, top_k=2, max_weight=0.4, stop_loss=0.0),
    # the defaults whose switch re-arms after 30 bars: it latches and re-arms about fifteen times in 2018-2024
    "rearm_cooldown": StrategyParams(kill_switch_cooldown=30),
    # re-arms after 20 bars until the drawdown since the start reaches 60%, then latched for good
    "rearm_capped": StrategyParams(kill_switch_cooldown=20, kill_switch_cap=0.6, kill_switch_window=60,
                                   rebalance_every=2, top_k=4),
    # the participation cap binding often (0.2% of a bar's volume), on a seven-year run without the switch
    "tight_participation": StrategyParams(kill_switch_drawdown=1.0, min_quote_volume=0.0),
}
# Execution settings other than the default for some sets.
CFG = {"tight_participation": {"max_participation": 0.002}, "rearm_capped": {"impact_coefficient": 0.1}}


def _compare(ref_res, fast_res) -> None:  # type: ignore[no-untyped-def]
    assert fast_res.trades.rows() == ref_res.trades.rows()  # exact: same bars, symbols, quantities, prices, fees
    np.testing.assert_array_equal(fast_res.equity, ref_res.equity)
    np.testing.assert_array_equal(fast_res.cash, ref_res.cash)
    np.testing.assert_array_equal(fast_res.regime, ref_res.regime)
    np.testing.assert_array_equal(fast_res.halted_mask, ref_res.halted_mask)
    assert (fast_res.halted_bar, fast_res.capped_bar, fast_res.skipped_legs, fast_res.capped_legs) == (
        ref_res.halted_bar, ref_res.capped_bar, ref_res.skipped_legs, ref_res.capped_legs)
    assert fast_res.capped_notional == ref_res.capped_notional  # the same drops, summed in the same order


@pytest.mark.parametrize("name", sorted(PARAM_SETS))
def test_fast_path_trades_exactly_like_the_reference_on_daily_data(
        name: str, panel_1d: Panel, rules_1d: dict[str, MarketRule], market_1d: Market) -> None:
    params = PARAM_SETS[name]
    validate_params(params)
    cfg = BacktestConfig(bar_ms=DAY, start=30, fill_at="close" if name == "zscore_kelly_tp" else "open",
                         **CFG.get(name, {}))  # type: ignore[arg-type]
    ref, _ = run_reference(panel_1d, params, cfg, rules_1d)
    fast = run_fast(market_1d, params, cfg)
    _compare(ref, fast)
    assert len(ref.trades) > 20  # a real run, not an empty one


def test_parity_runs_cover_every_kind_of_leg(panel_1d: Panel, rules_1d: dict[str, MarketRule],
                                             market_1d: Market) -> None:
    """The parity claim is only as strong as the paths it exercises: make sure they were exercised."""
    seen: set[str] = set()
    results = {}
    for name, params in PARAM_SETS.items():
        res = run_fast(market_1d, params, BacktestConfig(bar_ms=DAY, start=30, **CFG.get(name, {})))  # type: ignore[arg-type]
        seen |= {REASONS[int(r)] for r in res.trades.reason}
        results[name] = res
    assert {"enter", "add", "trim", "exit", "stop_loss", "take_profit", "kill_switch"} <= seen
    # and the kill-switch policy and the capacity model: re-arms, a cap that latches for good, cut legs
    assert results["rearm_cooldown"].rearms >= 5 and results["rearm_cooldown"].capped_bar == -1
    capped = results["rearm_capped"]
    assert capped.rearms >= 1 and capped.capped_bar >= 0 and bool(capped.halted_mask[-1])
    assert results["tight_participation"].capped_legs > 100 and results["no_kill"].capped_legs > 0


def test_signal_memo_shares_work_without_changing_results(market_1d: Market) -> None:
    cfg = BacktestConfig(bar_ms=DAY, start=30)
    cache = SignalCache()
    a = StrategyParams(kill_switch_drawdown=1.0)
    b = msgspec.structs.replace(a, stop_loss=0.05, cost_benefit_margin=0.0)  # same signal, other gates
    run_fast(market_1d, a, cfg, signals=cache)
    shared = run_fast(market_1d, b, cfg, signals=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    _compare(run_fast(market_1d, b, cfg), shared)


def test_fast_path_matches_on_hourly_data_with_gaps(shared_data_dir: Path) -> None:
    panel = load_panel(shared_data_dir, "1h", ["BTC_USDT", "ETH_USDT", "SOL_USDT", "MATIC_USDT", "LINK_USDT"])
    # 2018-02 holds the longest exchange outage (33 missing hours); MATIC's series ends in 2022-10
    rules = default_rules(panel).rules
    gaps = np.flatnonzero(np.diff(panel.timestamps) > timeframe_ms("1h"))
    matic_end = int(last_valid_index(panel)[panel.symbols.index("MATIC_USDT")])
    windows = ((2_000, 6_000), (matic_end - 1_500, matic_end + 1_000))
    assert any(lo <= g < hi for g in gaps for lo, hi in windows[:1])
    params = StrategyParams(kill_switch_drawdown=1.0, rebalance_every=6, min_quote_volume=0.0, top_k=2)
    # A switch that latches on a 10% drop over three days and re-arms 36 hours of data later (the cooldown counts
    # bar times, so across the outage it re-arms by the clock of the data, as the live service does).
    rearming = msgspec.structs.replace(params, kill_switch_drawdown=0.1, kill_switch_window=72,
                                       kill_switch_cooldown=36, kill_switch_cap=0.35)
    market = Market.build(panel, rules)
    for lo, hi in windows:
        cfg = BacktestConfig(bar_ms=timeframe_ms("1h"), start=lo, end=hi)
        for p in (params, rearming):
            ref, _ = run_reference(panel, p, cfg, rules)
            _compare(ref, run_fast(market, p, cfg))
            if p is rearming and lo == windows[0][0]:
                assert ref.rearms >= 1, "the hourly window never re-armed the switch; pick another"
