"""Backtester behaviour on the awkward cases: listings, series that end, gaps, zero volume, fill timing,
intrabar stops, the kill-switch latch, its re-arm and its cap, the participation cap and impact.  Synthetic
panels so each case is isolated; both engines checked.

Tests of fill prices at the base slippage set ``impact_coefficient=0`` (impact has its own test)."""

from __future__ import annotations

import math

import msgspec
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
    np.testing.assert_array_equal(fast.halted_mask, ref.halted_mask)
    assert (fast.halted_bar, fast.capped_bar, fast.skipped_legs, fast.capped_legs, fast.capped_notional) == (
        ref.halted_bar, ref.capped_bar, ref.skipped_legs, ref.capped_legs, ref.capped_notional)
    return ref


def with_(params: StrategyParams, **over: object) -> StrategyParams:
    return msgspec.structs.replace(params, **over)


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
    res = both(panel, SIMPLE, impact_coefficient=0.0)
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
    at_open = both(panel, SIMPLE, impact_coefficient=0.0)
    at_close = both(panel, SIMPLE, fill_at="close", impact_coefficient=0.0)
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
    res = both(wick, params, impact_coefficient=0.0)
    stop = next(t for t in res.trades.rows() if REASONS[t[6]] == "stop_loss")
    entry_px = res.trades.rows()[0][4]
    assert stop[0] == entry_bar + 5 and stop[7] == AT_INTRABAR
    assert stop[4] == pytest.approx(entry_px * 0.9 * (1 - 0.0005))
    opn = panel.open.copy()
    opn[entry_bar + 5, 0] = entry_px * 0.7  # opens below the stop: filled at the open, not at the level
    low[entry_bar + 5, 0] = entry_px * 0.69
    gap = Panel(panel.symbols, panel.timestamps, opn, panel.high, low, panel.close, panel.volume)
    stop = next(t for t in both(gap, params, impact_coefficient=0.0).trades.rows() if REASONS[t[6]] == "stop_loss")
    assert stop[4] == pytest.approx(entry_px * 0.7 * (1 - 0.0005))


def test_kill_switch_latches_for_the_rest_of_the_run() -> None:
    top = 100 * np.exp(0.59)
    crash = np.concatenate([rising(60, 0.01), [top * 0.6], rising(79, 0.02, top * 0.6)])  # -40% in one bar
    panel = panel_from_closes({"AAA_USDT": crash})
    params = StrategyParams(**{**{f: getattr(SIMPLE, f) for f in SIMPLE.__struct_fields__},
                               "kill_switch_drawdown": 0.3, "kill_switch_window": 30})
    res = both(panel, params)
    assert res.halted_bar >= 0 and res.rearms == 0 and bool(res.halted_mask[-1])  # cooldown 0: latched for good
    kill = [b for b, _, _, r in trades(res) if r == "kill_switch"]
    assert len(kill) == 1
    assert not any(side == "buy" and b > kill[0] for b, _, side, _ in trades(res))  # the recovery is missed
    assert np.all(res.cash[kill[0]:] == res.equity[kill[0]:])


def test_participation_cap_fills_at_most_its_share_of_the_bar_and_drops_the_rest() -> None:
    # 500 units trade each bar; the first buy (bar 31, at about 135) wants ~74 units of a 10k book, and 10% of
    # the bar is 50 units: those fill, the other ~24 (about 3,300 USDT at the leg's price) are dropped.
    panel = panel_from_closes({"AAA_USDT": rising(80, 0.01)}, volume=500.0)
    res = both(panel, SIMPLE)
    first = res.trades.rows()[0]
    assert first[2] == 1 and first[3] == 50.0  # floor(0.1 * 500) units: the cap, lot-rounded
    assert res.capped_legs == 1 and 3000.0 < res.capped_notional < 3500.0
    assert first[4] == pytest.approx(panel.open[first[0], 0] * (1 + 0.0005 + 0.03 * math.sqrt(0.1)))
    # The next cycle plans again from what was filled: the position is built up over several bars.
    buys = [t for t in res.trades.rows() if t[2] == 1]
    assert len(buys) > 1 and buys[1][0] == first[0] + 1
    uncapped = both(panel, SIMPLE, max_participation=math.inf)
    assert uncapped.capped_legs == 0 and uncapped.trades.rows()[0][3] > 70.0


def test_impact_grows_with_the_square_root_of_participation() -> None:
    panel = panel_from_closes({"AAA_USDT": rising(80, 0.01)})  # 1e7 units a bar: a tiny participation
    for k in (0.0, 0.03, 0.3):
        bar, _, side, qty, px, *_ = both(panel, SIMPLE, impact_coefficient=k).trades.rows()[0]
        assert side == 1 and px == pytest.approx(panel.open[bar, 0] * (1 + 0.0005 + k * math.sqrt(qty / 1e7)))
    assert BacktestConfig(bar_ms=DAY_MS).impact == pytest.approx(0.03)  # Y 0.5 x 6% daily volatility
    assert BacktestConfig(bar_ms=DAY_MS // 24).impact == pytest.approx(0.03 / math.sqrt(24))  # same cost per size
    with pytest.raises(ValueError, match="max_participation"):
        BacktestConfig(bar_ms=DAY_MS, max_participation=0.0)


# Up 59% in 60 bars, -35% in one bar (the rolling switch fires), up 2% a bar for 20 bars, -35% again, then up.
_TOP = 100 * np.exp(0.59)
_FIRST = rising(20, 0.02, _TOP * 0.65)
TWO_CRASHES = np.concatenate([rising(60, 0.01), _FIRST, rising(40, 0.02, _FIRST[-1] * 0.65)])
KILL = with_(SIMPLE, kill_switch_drawdown=0.3, kill_switch_window=30)


def test_kill_switch_rearms_after_its_cooldown_with_the_drawdown_measured_from_the_rearm() -> None:
    panel = panel_from_closes({"AAA_USDT": TWO_CRASHES})
    res = both(panel, with_(KILL, kill_switch_cooldown=10))
    # Latched at the close of bar 60, re-armed at bar 70 (ten bars of data later) and bought back at 71's open;
    # the old peak is still inside the 30-bar window, so without the restart it would have latched at once.
    assert res.halted_bar == 60 and np.flatnonzero(res.halted_mask).tolist() == [*range(60, 70), *range(80, 90)]
    assert (res.halts, res.rearms, res.capped_bar) == (2, 2, -1)
    assert [(b, side, r) for b, _, side, r in trades(res)] == [
        (30, "buy", "enter"), (61, "sell", "kill_switch"), (71, "buy", "enter"), (81, "sell", "kill_switch"),
        (91, "buy", "enter")]


def test_kill_switch_cap_keeps_it_latched_whatever_the_cooldown() -> None:
    panel = panel_from_closes({"AAA_USDT": TWO_CRASHES})
    # The second crash takes the book about 49% below its peak of the run: beyond a 45% cap, for good.
    res = both(panel, with_(KILL, kill_switch_cooldown=10, kill_switch_cap=0.45))
    assert (res.halts, res.rearms, res.halted_bar, res.capped_bar) == (2, 1, 60, 80)
    assert bool(res.halted_mask[-1]) and not any(side == "buy" and b > 81 for b, _, side, _ in trades(res))
    # A cap reached on the first crash (35% below the peak) latches it there and then.
    first = both(panel, with_(KILL, kill_switch_cooldown=10, kill_switch_cap=0.3))
    assert (first.halts, first.rearms, first.capped_bar) == (1, 0, 60)


def test_determinism_same_inputs_same_everything() -> None:
    panel = panel_from_closes({"AAA_USDT": rising(120, 0.004), "BBB_USDT": rising(120, 0.006)})
    a = both(panel, SIMPLE)
    b = both(panel, SIMPLE)
    assert a.trades.rows() == b.trades.rows() and a.equity.tobytes() == b.equity.tobytes()
