"""The three risk gates, each as the pure function the risk service calls, then their order in risk_plan.

The gates live in ``aura.strategy`` (shared with the backtester); these tests pin the behaviour the risk
service relies on: a latched kill-switch, stops that exit at the right level, a cost-benefit hold that never
blocks an exit, and the fixed order kill-switch -> stops -> cost-benefit.  The cost-benefit gate is a numba
array core the backtest kernel shares; it is exercised through ``risk_plan``, the entry point risk calls.
"""

from __future__ import annotations

import dataclasses
import math

import msgspec
import pytest

from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, risk_plan
from aura.strategy.risk_gates import (
    NO_STOP,
    STOP_LOSS,
    TAKE_PROFIT,
    kill_switch,
    rolling_drawdown,
    stop_trigger,
)
from aura.strategy.types import MarketRule, Targets
from services.risk.tick import latch_after

RULES = {s: MarketRule(s, 0.0001, 0.01, 0.0001, 5.0) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT")}
PARAMS = StrategyParams(kill_switch_drawdown=0.25, kill_switch_window=30, stop_loss=0.15, take_profit=0.5,
                        cost_benefit_margin=1.0)


# --- gate 1: kill-switch --------------------------------------------------------------------------------------


def test_kill_switch_fires_at_the_drawdown_threshold_within_its_window() -> None:
    assert rolling_drawdown([100.0, 120.0, 90.0], window=30) == pytest.approx(0.25)
    assert kill_switch([100.0, 120.0, 90.0], PARAMS)
    assert not kill_switch([100.0, 120.0, 91.0], PARAMS)
    old_peak = [200.0] + [100.0] * 40 + [80.0]  # the 200 peak is outside the 30-point window
    assert rolling_drawdown(old_peak, window=30) == pytest.approx(0.2) and not kill_switch(old_peak, PARAMS)


def test_kill_switch_latches_until_reset() -> None:
    state = PortfolioState(cash=50.0, holdings={"BTC/USDT": 0.001}, equity_history=(100.0, 120.0))
    fired = risk_plan(None, state, {"BTC/USDT": 40_000.0}, RULES, PARAMS, 0.001)
    assert fired.gate == "kill_switch" and fired.halted
    assert latch_after(False, fired)
    # Equity recovered, but the latch holds: still liquidating, gate "halted", until an operator resets it.
    calm = PortfolioState(cash=1000.0, holdings={"BTC/USDT": 0.01}, equity_history=(1000.0,), halted=True)
    held = risk_plan(Targets({"BTC/USDT": 0.5}, "bull"), calm, {"BTC/USDT": 40_000.0}, RULES, PARAMS, 0.001)
    assert held.gate == "halted" and held.halted and latch_after(True, held)
    assert [(x.side, x.symbol, x.reason) for x in held.legs] == [("sell", "BTC/USDT", "kill_switch")]
    reset = risk_plan(Targets({"BTC/USDT": 0.5}, "bull"), PortfolioState(cash=1000.0, holdings={"BTC/USDT": 0.01},
                      equity_history=(1000.0,)), {"BTC/USDT": 40_000.0}, RULES, PARAMS, 0.001)
    assert not reset.halted and not latch_after(False, reset)


def test_kill_switch_cap_measures_from_the_peak_since_the_last_reset() -> None:
    # The rolling window (restarted by a re-arm) sees 700 -> 650, -7%; the book is 41% under its 1100 peak since
    # the last reset, beyond a 40% cap: it fires, and the outcome says the cap did (the latch then stays).
    capped = msgspec.structs.replace(PARAMS, kill_switch_cap=0.4)
    state = PortfolioState(cash=650.0, holdings={}, equity_history=(700.0,), peak_equity=1100.0)
    out = risk_plan(None, state, {}, RULES, capped, 0.001)
    assert out.halted and out.capped and out.gate == "kill_switch"
    assert out.drawdown == pytest.approx(1 - 650 / 700) and out.drawdown_since_reset == pytest.approx(1 - 650 / 1100)
    assert any("reached the cap" in r for r in out.reasons)
    calm = risk_plan(None, dataclasses.replace(state, peak_equity=1000.0), {}, RULES, capped, 0.001)
    assert not calm.halted and not calm.capped  # 35% under the peak: inside the cap
    assert not risk_plan(None, state, {}, RULES, PARAMS, 0.001).halted  # the cap is off by default (1.0)


# --- gate 2: stop-loss / take-profit ---------------------------------------------------------------------------


def test_stop_trigger_levels_and_gaps() -> None:
    assert stop_trigger(100.0, 90.0, 90.0, 90.0, 0.15, 0.5)[0] == NO_STOP
    kind, px = stop_trigger(100.0, 84.0, 84.0, 84.0, 0.15, 0.5)  # live: all three are the latest price
    assert kind == STOP_LOSS and px == 84.0
    kind, px = stop_trigger(100.0, 95.0, 96.0, 80.0, 0.15, 0.5)  # intrabar: exits at the level
    assert kind == STOP_LOSS and px == pytest.approx(85.0)
    kind, px = stop_trigger(100.0, 70.0, 72.0, 65.0, 0.15, 0.5)  # gapped through: exits at the open
    assert kind == STOP_LOSS and px == 70.0
    kind, px = stop_trigger(100.0, 151.0, 151.0, 151.0, 0.15, 0.5)
    assert kind == TAKE_PROFIT and px == 151.0
    assert stop_trigger(100.0, 50.0, 50.0, 50.0, 0.0, 0.0)[0] == NO_STOP  # 0 disables both
    assert stop_trigger(math.nan, 50.0, 50.0, 50.0, 0.15, 0.5)[0] == NO_STOP  # no entry, no stop


# --- gate 3: cost-benefit ----------------------------------------------------------------------------------------


def test_cost_benefit_holds_unprofitable_buys_but_never_an_exit() -> None:
    state = PortfolioState(cash=500.0, holdings={"ETH/USDT": 5.0}, entry_prices={"ETH/USDT": 100.0},
                           equity_history=(1000.0,))
    prices = {"ETH/USDT": 100.0, "SOL/USDT": 100.0}
    # Exit ETH, enter SOL with a forecast far too small to pay the round trip: the entry is held back...
    weak = Targets({"SOL/USDT": 0.5}, "bull", expected_returns={"SOL/USDT": 1e-6})
    held = risk_plan(weak, state, prices, RULES, PARAMS, 0.001)
    assert held.gate == "hold"
    assert [(x.side, x.symbol) for x in held.legs] == [("sell", "ETH/USDT")]  # ...the exit is not
    assert any("cost-benefit" in r and "holding" in r for r in held.reasons)
    # With a forecast that pays for it, the same entry goes ahead.
    strong = Targets({"SOL/USDT": 0.5}, "bull", expected_returns={"SOL/USDT": 0.01})
    passed = risk_plan(strong, state, prices, RULES, PARAMS, 0.001)
    assert passed.gate == "pass"
    assert [(x.side, x.symbol) for x in passed.legs] == [("sell", "ETH/USDT"), ("buy", "SOL/USDT")]


def test_cost_benefit_band_keeps_small_changes_of_a_held_name() -> None:
    state = PortfolioState(cash=500.0, holdings={"BTC/USDT": 0.0125}, entry_prices={"BTC/USDT": 40_000.0},
                           equity_history=(1000.0,))
    nudge = Targets({"BTC/USDT": 0.51}, "bull", expected_returns={"BTC/USDT": 0.01})
    out = risk_plan(nudge, state, {"BTC/USDT": 40_000.0}, RULES, PARAMS, 0.001)
    assert out.legs == []  # a 1% change of a held name is not worth two fees


# --- the order: kill-switch -> stops -> cost-benefit -------------------------------------------------------------


def test_kill_switch_comes_before_stops_and_targets() -> None:
    state = PortfolioState(cash=100.0, holdings={"BTC/USDT": 0.01, "ETH/USDT": 1.0},
                           entry_prices={"BTC/USDT": 50_000.0, "ETH/USDT": 2000.0}, equity_history=(2000.0,))
    out = risk_plan(Targets({"SOL/USDT": 0.9}, "bull"), state, {"BTC/USDT": 40_000.0, "ETH/USDT": 1000.0,
                                                                "SOL/USDT": 100.0}, RULES, PARAMS, 0.001)
    assert out.gate == "kill_switch"
    assert sorted((x.side, x.symbol, x.reason) for x in out.legs) == [("sell", "BTC/USDT", "kill_switch"),
                                                                     ("sell", "ETH/USDT", "kill_switch")]


def test_stops_come_before_the_rebalance_and_are_not_rebought() -> None:
    state = PortfolioState(cash=1000.0, holdings={"BTC/USDT": 0.02}, entry_prices={"BTC/USDT": 50_000.0},
                           equity_history=(1800.0,))
    out = risk_plan(Targets({"BTC/USDT": 0.5, "ETH/USDT": 0.4}, "bull"), state,
                    {"BTC/USDT": 42_000.0, "ETH/USDT": 2000.0}, RULES, PARAMS, 0.001)
    assert out.legs[0].symbol == "BTC/USDT" and out.legs[0].reason == "stop_loss" and out.legs[0].side == "sell"
    assert all(not (x.symbol == "BTC/USDT" and x.side == "buy") for x in out.legs)
    assert any("stop_loss BTC/USDT" in r for r in out.reasons)


def test_a_tick_runs_only_the_kill_switch_and_the_stops() -> None:
    state = PortfolioState(cash=1000.0, holdings={"BTC/USDT": 0.02}, entry_prices={"BTC/USDT": 40_000.0},
                           equity_history=(1800.0,))
    calm = risk_plan(None, state, {"BTC/USDT": 41_000.0}, RULES, PARAMS, 0.001)
    assert calm.legs == [] and calm.gate == "pass"  # no targets: never a buy, never a rebalance
    stopped = risk_plan(None, state, {"BTC/USDT": 33_000.0}, RULES, PARAMS, 0.001)
    assert [(x.side, x.qty, x.reason) for x in stopped.legs] == [("sell", 0.02, "stop_loss")]
