"""Backtester behaviour on the awkward cases: listings, series that end, gaps, zero volume, fill timing,
intrabar stops, the kill-switch latch.  Synthetic panels so each case is isolated; both engines checked."""

from __future__ import annotations

import numpy as np
import pytest

from aura.backtest.engine import AT_INTRABAR, BacktestConfig, BacktestResult, run_reference
from aura.backtest.fast import Market, run_fast
from aura.strategy.params import StrategyParams
from aura.strategy.rebalance import REASONS
from aura.strategy.types import Panel
from tests.strategy.synth import DAY_MS, panel_from_closes, rules_for

# One name, always invested when it qualifies, no gates unless a test turns one on.
SIMPLE = StrategyParams(
    top_k=1, top_k_sideways=1, top_k_bear=1, exposure_bull=1.0, exposure_sideways=1.0, exposure_bear=1.0,
    max_weight=1.0, min_quote_volume=0.0, screen_min_momentum=-0.5, screen_max_drawdown=1.0, min_history=30,
    momentum_lookback=10, momentum_long_lookback=20, sma_length=10, drawdown_window=20, vol_window=10,
    vote_offsets=1, regime_confirm=1, kill_switch_drawdown=1.0, stop_loss=0.0, cost_benefit_margin=0.0,
    rebalance_band=0.0, cash_buffer=0.0)


def both(panel: Panel, params: StrategyParams, **cfg_kw: object) -> BacktestResult:
    cfg = BacktestConfig(bar_ms=DAY_MS, **cfg_kw)  # type: ignore[arg-type]
    rules = rules_for(panel.symbols)
    ref, _ = run_reference(panel, params, cfg, rules)
    fast = run_fast(Market.build(panel, rules), params, cfg)
    assert fast.trades.rows() == ref.trades.rows()
    np.testing.assert_array_equal(fast.equity, ref.equity)
    return ref


def trades(res: BacktestResult) -> list[tuple[int, str, str, str]]:
    return [(b, res.symbols[s], "buy" if d > 0 else "sell", REASONS[r]) for b, s, d, _q, _p, _f, r, _a in
            res.trades.rows()]


def rising(n: int, rate: float = 0.01, start: float = 100.0) -> np.ndarray:
    return start * np.exp(rate * np.arange(n))


def test_no_position_before_a_listing_has_its_full_history() -> None:
    late = np.concatenate([np.full(50, np.nan), rising(70, 0.03)])
    panel = panel_from_closes({"AAA_USDT": rising(120, 0.001), "NEW_USDT": late})
    res = both(panel, SIMPLE)
    first_new = min(b for b, s, side, _ in trades(res) if s == "NEW_USDT")
    assert first_new >= 50 + 30  # listed at 50, needs 30 closes (and its 20-bar windows) first


def test_a_series_that_ends_is_sold_at_its_last_close_and_never_valued_after() -> None:
    ends = np.concatenate([rising(80, 0.02), np.full(40, np.nan)])
    panel = panel_from_closes({"AAA_USDT": rising(120, 0.001), "END_USDT": ends})
    res = both(panel, SIMPLE)
    exits = [t for t in res.trades.rows() if REASONS[t[6]] == "data_end"]
    assert len(exits) == 1 and exits[0][0] == 79 and res.symbols[exits[0][1]] == "END_USDT"
    assert exits[0][4] == pytest.approx(ends[79] * (1 - 0.0005))  # last close, slippage against us
    assert np.all(np.isfinite(res.equity))
    assert not any(s == "END_USDT" and b > 79 for b, s, _, _ in trades(res))


def test_no_fill_on_a_missing_or_zero_volume_bar() -> None:
    panel = panel_from_closes({"AAA_USDT": rising(80, 0.01)})
    vol = panel.volume.copy()
    first_buy = trades(both(panel, SIMPLE))[0][0]
    vol[first_buy, 0] = 0.0  # the exchange traded nothing in that bar
    dry = Panel(panel.symbols, panel.timestamps, panel.open, panel.high, panel.low, panel.close, vol)
    res = both(dry, SIMPLE)
    assert trades(res)[0][0] == first_buy + 1 and res.skipped_legs == 1


def test_fill_at_next_open_or_at_the_decision_close() -> None:
    panel = panel_from_closes({"AAA_USDT": rising(80, 0.01)})
    at_open = both(panel, SIMPLE)
    at_close = both(panel, SIMPLE, fill_at="close")
    bar_o, _, _, _, px_o, *_ = at_open.trades.rows()[0]
    bar_c, _, _, _, px_c, *_ = at_close.trades.rows()[0]
    assert bar_o == bar_c + 1  # decided at the close of bar_c either way
    assert px_o == pytest.approx(panel.open[bar_o, 0] * 1.0005)
    assert px_c == pytest.approx(panel.close[bar_c, 0] * 1.0005)


def test_intrabar_stop_exits_at_the_level_and_at_the_open_on_a_gap() -> None:
    close = rising(80, 0.01)
    panel = panel_from_closes({"AAA_USDT": close})
    params = StrategyParams(**{**{f: getattr(SIMPLE, f) for f in SIMPLE.__struct_fields__}, "stop_loss": 0.1})
    entry_bar = trades(both(panel, params))[0][0]
    low = panel.low.copy()
    low[entry_bar + 5, 0] = panel.open[entry_bar + 5, 0] * 0.5  # a wick far below the stop
    wick = Panel(panel.symbols, panel.timestamps, panel.open, panel.high, low, panel.close, panel.volume)
    res = both(wick, params)
    stop = next(t for t in res.trades.rows() if REASONS[t[6]] == "stop_loss")
    entry_px = res.trades.rows()[0][4]
    assert stop[0] == entry_bar + 5 and stop[7] == AT_INTRABAR
    assert stop[4] == pytest.approx(entry_px * 0.9 * (1 - 0.0005))
    opn = panel.open.copy()
    opn[entry_bar + 5, 0] = entry_px * 0.7  # opens below the stop: filled at the open, not at the level
    low[entry_bar + 5, 0] = entry_px * 0.69
    gap = Panel(panel.symbols, panel.timestamps, opn, panel.high, low, panel.close, panel.volume)
    stop = next(t for t in both(gap, params).trades.rows() if REASONS[t[6]] == "stop_loss")
    assert stop[4] == pytest.approx(entry_px * 0.7 * (1 - 0.0005))


def test_kill_switch_latches_for_the_rest_of_the_run() -> None:
    top = 100 * np.exp(0.59)
    crash = np.concatenate([rising(60, 0.01), [top * 0.6], rising(79, 0.02, top * 0.6)])  # -40% in one bar
    panel = panel_from_closes({"AAA_USDT": crash})
    params = StrategyParams(**{**{f: getattr(SIMPLE, f) for f in SIMPLE.__struct_fields__},
                               "kill_switch_drawdown": 0.3, "kill_switch_window": 30})
    res = both(panel, params)
    assert res.halted_bar >= 0
    kill = [b for b, _, _, r in trades(res) if r == "kill_switch"]
    assert len(kill) == 1
    assert not any(side == "buy" and b > kill[0] for b, _, side, _ in trades(res))  # the recovery is missed
    assert np.all(res.cash[kill[0]:] == res.equity[kill[0]:])


def test_determinism_same_inputs_same_everything() -> None:
    panel = panel_from_closes({"AAA_USDT": rising(120, 0.004), "BBB_USDT": rising(120, 0.006)})
    a = both(panel, SIMPLE)
    b = both(panel, SIMPLE)
    assert a.trades.rows() == b.trades.rows() and a.equity.tobytes() == b.equity.tobytes()
