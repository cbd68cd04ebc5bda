"""Rebalance plan (lots, minimum notional, cash) and risk_plan: the gates in their fixed order."""

from __future__ import annotations

import pytest

from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, risk_plan
from aura.strategy.rebalance import floor_to_step, rebalance_plan
from aura.strategy.types import MarketRule, Targets

RULES = {s: MarketRule(s, 0.001, 0.01, 0.001, 5.0) for s in ("A", "B", "C")}
NO_CB = StrategyParams(cost_benefit_margin=0.0, rebalance_band=0.0, cash_buffer=0.0)


def test_floor_to_step_gives_clean_decimals() -> None:
    assert floor_to_step(0.3, 0.1) == 0.3
    assert floor_to_step(1.23456, 0.001) == 1.234
    assert floor_to_step(0.29999999, 0.1) == 0.2
    assert floor_to_step(7, 2) == 6.0
    assert floor_to_step(5.5, 0) == 5.5
    assert floor_to_step(0.75, 0.25) == 0.75


def test_plan_sells_first_rounds_lots_and_fits_buys_into_cash() -> None:
    legs = rebalance_plan({"B": 0.6, "C": 0.4}, {"A": 2.0}, 0.0, {"A": 100.0, "B": 10.0, "C": 20.0}, RULES,
                          0.001, 10.0)
    assert [(leg.symbol, leg.side, leg.reason) for leg in legs] == [("A", "sell", "exit"), ("B", "buy", "enter"),
                                                                      ("C", "buy", "enter")]
    assert legs[0].qty == 2.0
    spent = sum(leg.notional * 1.001 for leg in legs[1:])
    assert spent <= 2.0 * 100.0 * 0.999 + 1e-9  # buys fit into what the sell frees, fees included
    for leg in legs:
        assert leg.qty == floor_to_step(leg.qty, 0.001)


def test_plan_drops_small_legs_and_never_trades_without_a_price_or_rule() -> None:
    legs = rebalance_plan({"A": 0.5, "B": 0.5}, {"C": 1.0}, 100.0, {"A": 10.0, "B": 10.0}, RULES, 0.001, 60.0)
    assert legs == []  # 50 USDT buys < min_trade 60; C has no price: not sold blind
    assert rebalance_plan({"Z": 1.0}, {}, 100.0, {"Z": 1.0}, RULES, 0.001, 5.0) == []  # no rule for Z


def test_full_exit_only_needs_the_exchange_minimum() -> None:
    legs = rebalance_plan({}, {"A": 0.06}, 0.0, {"A": 100.0}, RULES, 0.001, 10.0)
    assert [(leg.side, leg.qty, leg.reason) for leg in legs] == [("sell", 0.06, "exit")]  # 6 USDT >= 5


def test_kill_switch_liquidates_and_latches() -> None:
    state = PortfolioState(cash=0.0, holdings={"A": 1.0}, entry_prices={"A": 100.0},
                           equity_history=(100.0, 100.0))
    out = risk_plan(Targets({"A": 1.0}, "bull"), state, {"A": 70.0}, RULES, NO_CB, 0.001)
    assert out.gate == "kill_switch" and out.halted and out.drawdown == pytest.approx(0.3)
    assert [(leg.symbol, leg.side, leg.qty, leg.reason) for leg in out.legs] == [("A", "sell", 1.0, "kill_switch")]
    latched = PortfolioState(cash=70.0, holdings={}, equity_history=(100.0, 70.0), halted=True)
    again = risk_plan(Targets({"A": 1.0}, "bull"), latched, {"A": 100.0}, RULES, NO_CB, 0.001)
    assert again.gate == "halted" and again.halted and again.legs == []  # no buying back while halted


def test_marks_keep_a_missing_price_from_looking_like_a_loss() -> None:
    state = PortfolioState(cash=0.0, holdings={"A": 1.0}, equity_history=(100.0,))
    assert risk_plan(None, state, {}, RULES, NO_CB, 0.001).gate == "kill_switch"  # valued at 0 without a mark
    out = risk_plan(None, state, {}, RULES, NO_CB, 0.001, marks={"A": 99.0})
    assert out.gate == "pass" and out.equity == 99.0 and out.legs == []


def test_stop_exits_first_and_is_not_bought_back_on_the_same_cycle() -> None:
    p = StrategyParams(stop_loss=0.1, cost_benefit_margin=0.0, rebalance_band=0.0, cash_buffer=0.0)
    state = PortfolioState(cash=0.0, holdings={"A": 1.0}, entry_prices={"A": 100.0}, equity_history=(100.0,))
    out = risk_plan(Targets({"A": 0.5, "B": 0.5}, "bull"), state, {"A": 95.0, "B": 10.0}, RULES, p, 0.001,
                    opens={"A": 98.0, "B": 10.0}, highs={"A": 99.0, "B": 10.0}, lows={"A": 85.0, "B": 10.0})
    assert out.legs[0].symbol == "A" and out.legs[0].reason == "stop_loss" and out.legs[0].ref_price == 90.0
    assert [leg.symbol for leg in out.legs if leg.side == "buy"] == ["B"]
    # B is sized from the equity after the stop: 90 * 0.999 cash, half of it
    buy = next(leg for leg in out.legs if leg.side == "buy")
    assert buy.notional == pytest.approx(0.5 * 90 * 0.999, rel=1e-3)
    # live form: no bar range, the latest price 95 is above the stop
    live = risk_plan(Targets({"A": 1.0}, "bull"), state, {"A": 95.0}, RULES, p, 0.001)
    assert all(leg.reason != "stop_loss" for leg in live.legs)


def test_risk_tick_without_targets_only_runs_the_protective_gates() -> None:
    p = StrategyParams(take_profit=0.5)
    state = PortfolioState(cash=10.0, holdings={"A": 1.0, "B": 3.0}, entry_prices={"A": 100.0, "B": 10.0},
                           equity_history=(140.0,))
    out = risk_plan(None, state, {"A": 160.0, "B": 10.0}, RULES, p, 0.001)
    assert [(leg.symbol, leg.reason, leg.ref_price) for leg in out.legs] == [("A", "take_profit", 160.0)]


def test_cost_benefit_hold_keeps_the_book_but_lets_exits_through() -> None:
    p = StrategyParams(cost_benefit_margin=1.0, rebalance_band=0.0, cash_buffer=0.0)
    state = PortfolioState(cash=0.0, holdings={"A": 1.0}, entry_prices={"A": 100.0}, equity_history=(100.0,))
    poor = Targets({"B": 1.0}, "bull", expected_returns={"B": 1e-6})
    out = risk_plan(poor, state, {"A": 100.0, "B": 10.0}, RULES, p, 0.001)
    assert out.gate == "hold"
    assert [(leg.symbol, leg.reason) for leg in out.legs] == [("A", "exit")]
    good = Targets({"B": 1.0}, "bull", expected_returns={"B": 0.01})
    assert [leg.symbol for leg in risk_plan(good, state, {"A": 100.0, "B": 10.0}, RULES, p, 0.001).legs] == [
        "A", "B"]
    blind = risk_plan(Targets({"B": 1.0}, "bull"), state, {"A": 100.0, "B": 10.0}, RULES, p, 0.001)
    assert blind.gate == "pass" and any("gain test skipped" in r for r in blind.reasons)


def test_cash_buffer_keeps_part_of_the_targets_back() -> None:
    p = StrategyParams(cost_benefit_margin=0.0, rebalance_band=0.0, cash_buffer=0.05)
    out = risk_plan(Targets({"B": 1.0}, "bull"), PortfolioState(cash=1000.0, holdings={}), {"B": 10.0}, RULES, p,
                    0.0)
    assert out.legs[0].notional == pytest.approx(950.0)
