"""Each risk gate on its own: kill-switch, stop-loss / take-profit, cost-benefit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aura.strategy.params import StrategyParams
from aura.strategy.risk_gates import (
    NO_STOP,
    STOP_LOSS,
    TAKE_PROFIT,
    cost_benefit_adjust,
    kill_switch,
    kill_switch_after,
    kill_switch_fires,
    rearm_due,
    rolling_drawdown,
    stop_trigger,
)


def test_rolling_drawdown_only_looks_back_window_points() -> None:
    eq = [100.0, 200.0, 150.0, 120.0]
    assert rolling_drawdown(eq, 4) == pytest.approx(0.4)
    assert rolling_drawdown(eq, 2) == pytest.approx(0.2)  # the 200 peak is outside the window
    assert rolling_drawdown([], 10) == 0.0
    assert rolling_drawdown([0.0, 0.0], 10) == 0.0


def test_kill_switch_trips_at_the_threshold() -> None:
    p = StrategyParams(kill_switch_drawdown=0.25, kill_switch_window=10)
    assert kill_switch([100.0, 75.0], p)
    assert not kill_switch([100.0, 75.01], p)
    assert not kill_switch([100.0, 1e-9], StrategyParams(kill_switch_drawdown=1.0))  # 1.0 never trips


def test_kill_switch_fires_on_the_rolling_drawdown_or_on_the_cap_since_the_reset() -> None:
    # (rolling drawdown, equity, peak since the reset, threshold, cap)
    assert kill_switch_fires(0.25, 90.0, 100.0, 0.25, 1.0) == (True, False)
    assert kill_switch_fires(0.1, 50.0, 100.0, 0.25, 0.5) == (True, True)  # the cap fires it, and says so
    assert kill_switch_fires(0.1, 51.0, 100.0, 0.25, 0.5) == (False, False)
    assert kill_switch_fires(0.1, 0.0, 100.0, 0.25, 1.0) == (False, False)  # a cap of 1.0 is off


def test_a_latched_switch_rearms_after_its_cooldown_in_bars_unless_capped() -> None:
    day = 86_400_000
    assert not rearm_due(True, False, 5 * day, 7 * day, 3, day)
    assert rearm_due(True, False, 5 * day, 8 * day, 3, day)  # three bars after the bar it latched on
    assert not rearm_due(True, False, 5 * day, 500 * day, 0, day)  # cooldown 0: only an operator reset
    assert not rearm_due(True, True, 5 * day, 500 * day, 3, day)  # capped: only an operator reset
    assert not rearm_due(False, False, 5 * day, 500 * day, 3, day)  # not latched: nothing to re-arm


def test_the_latch_after_a_decision_counts_its_cooldown_from_the_first_bar_of_the_halt() -> None:
    assert kill_switch_after(False, True, False, False, 0, 7) == (True, False, 7)  # latches on bar 7
    assert kill_switch_after(True, True, False, False, 7, 9) == (True, False, 7)  # still the bar it latched on
    assert kill_switch_after(True, True, False, True, 7, 9) == (True, True, 7)  # the cap reached while halted
    assert kill_switch_after(False, False, False, False, 7, 12) == (False, False, 7)  # re-armed and calm


def test_stop_loss_intrabar_at_the_level_or_at_a_gapped_open() -> None:
    assert stop_trigger(100.0, 99.0, 101.0, 84.0, 0.15, 0.0) == (STOP_LOSS, 85.0)
    assert stop_trigger(100.0, 80.0, 81.0, 79.0, 0.15, 0.0) == (STOP_LOSS, 80.0)  # opened below the stop
    kind, px = stop_trigger(100.0, 99.0, 101.0, 86.0, 0.15, 0.0)
    assert kind == NO_STOP and math.isnan(px)


def test_take_profit_and_stop_first_when_both_inside_one_bar() -> None:
    assert stop_trigger(100.0, 110.0, 160.0, 105.0, 0.15, 0.5) == (TAKE_PROFIT, 150.0)
    assert stop_trigger(100.0, 170.0, 171.0, 165.0, 0.15, 0.5) == (TAKE_PROFIT, 170.0)  # gapped above
    assert stop_trigger(100.0, 100.0, 160.0, 80.0, 0.15, 0.5)[0] == STOP_LOSS  # pessimistic order


def test_live_form_uses_the_latest_price_and_zero_disables() -> None:
    assert stop_trigger(100.0, 84.0, 84.0, 84.0, 0.15, 0.0) == (STOP_LOSS, 84.0)
    assert stop_trigger(100.0, 1.0, 1.0, 1.0, 0.0, 0.0)[0] == NO_STOP
    assert stop_trigger(math.nan, 1.0, 1.0, 1.0, 0.15, 0.0)[0] == NO_STOP  # unknown entry: cannot judge


def _cb(weights, holdings, price, er, cash, band=0.0, margin=1.0, cost=0.0015, horizon=10):  # type: ignore[no-untyped-def]
    out = np.zeros(len(weights))
    held_back, gain, c = cost_benefit_adjust(len(weights), np.array(weights, dtype=float),
                                             np.array(holdings, dtype=float), np.array(price, dtype=float),
                                             np.array(er, dtype=float), cash, True, band, margin, cost, horizon, out)
    return held_back, out, gain, c


def test_cost_benefit_holds_buys_whose_gain_does_not_cover_the_round_trip() -> None:
    held_back, out, gain, cost = _cb([0.5], [0.0], [10.0], [0.0001], 1000.0)
    assert held_back and out.tolist() == [0.0]
    assert gain == pytest.approx(0.5 * 0.0001 * 10) and cost == pytest.approx(0.5 * 2 * 0.0015)
    held_back, out, _, _ = _cb([0.5], [0.0], [10.0], [0.01], 1000.0)
    assert not held_back and out.tolist() == [0.5]


def test_cost_benefit_never_blocks_exits_or_trims() -> None:
    # A is exited, B trimmed from 0.5 to 0.2, C entered with a poor forecast: only C is held back.
    held_back, out, _, _ = _cb([0.0, 0.2, 0.3], [10.0, 50.0, 0.0], [10.0, 10.0, 10.0], [0.01, 0.01, 0.0], 400.0)
    assert held_back
    assert out.tolist() == [0.0, 0.2, 0.0]


def test_band_keeps_small_adjustments_of_held_names() -> None:
    _, out, _, _ = _cb([0.51, 0.3], [50.0, 0.0], [10.0, 10.0], [0.01, 0.01], 500.0, band=0.02)
    assert out[0] == pytest.approx(0.5) and out[1] == 0.3  # 0.5 -> 0.51 is not worth a trade; the entry is
    _, out, _, _ = _cb([0.51], [50.0], [10.0], [0.01], 500.0, band=0.0)
    assert out[0] == 0.51


def test_margin_zero_or_no_forecasts_switches_the_gain_test_off() -> None:
    assert not _cb([0.5], [0.0], [10.0], [-0.1], 1000.0, margin=0.0)[0]
    out = np.zeros(1)
    held_back, _, _ = cost_benefit_adjust(1, np.array([0.5]), np.zeros(1), np.array([10.0]), np.zeros(1), 1000.0,
                                          False, 0.0, 1.0, 0.0015, 10, out)
    assert not held_back and out[0] == 0.5
