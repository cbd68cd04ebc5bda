"""The participation cap as live risk applies it (aura/strategy/capacity.py through risk_plan): the rule the
backtest's fill_leg applies to the bar a leg fills in, applied to the bar the plan is decided on."""

from __future__ import annotations

import math

from aura.strategy.capacity import cap_legs
from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, risk_plan
from aura.strategy.types import Leg, MarketRule, Targets

RULES = {s: MarketRule(s, 0.001, 0.01, 0.001, 5.0) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT")}


def test_a_leg_within_the_cap_is_left_exactly_as_planned() -> None:
    leg = Leg("BTC/USDT", "buy", 0.123, 50_000.0, "rebalance")
    assert cap_legs([leg], {"BTC/USDT": 1.23}, 0.1, RULES) == ([leg], [])
    assert cap_legs([leg], {"BTC/USDT": 1.0}, math.inf, RULES) == ([leg], [])


def test_a_larger_leg_is_cut_to_the_cap_lot_floored_and_one_below_the_minimums_dropped() -> None:
    legs = [Leg("BTC/USDT", "buy", 0.5, 50_000.0, "rebalance"), Leg("ETH/USDT", "sell", 3.0, 2_000.0, "stop_loss"),
            Leg("SOL/USDT", "buy", 10.0, 100.0, "rebalance")]
    kept, reasons = cap_legs(legs, {"BTC/USDT": 2.3456, "ETH/USDT": 0.02, "SOL/USDT": 1e6}, 0.1, RULES)
    # BTC: 10% of 2.3456 = 0.23456, floored to the 0.001 lot.  ETH: 0.002 ETH is 4 USDT < 5: dropped whole.
    assert [(x.symbol, x.side, x.qty, x.reason) for x in kept] == [
        ("BTC/USDT", "buy", 0.234, "rebalance"), ("SOL/USDT", "buy", 10.0, "rebalance")]
    assert reasons == [
        "participation cap: BTC/USDT buy cut from 0.5 to 0.234 (0.1 of the decision bar's volume 2.3456)",
        "participation cap: ETH/USDT sell of 3 dropped (0.1 of the decision bar's volume 0.02 is below the "
        "exchange minimums)"]


def test_no_trade_in_the_bar_caps_to_nothing_and_an_unknown_volume_is_said_not_silently_passed() -> None:
    legs = [Leg("BTC/USDT", "buy", 0.5, 50_000.0, "rebalance"), Leg("ETH/USDT", "buy", 1.0, 2_000.0, "rebalance")]
    kept, reasons = cap_legs(legs, {"BTC/USDT": 0.0}, 0.1, RULES)  # ETH has no volume at all (a gap)
    assert kept == [legs[1]]
    assert reasons[0].startswith("participation cap: BTC/USDT buy of 0.5 dropped")
    assert reasons[1] == "participation cap: ETH/USDT has no volume in the decision bar; buy of 1 not capped"


def test_risk_plan_caps_its_legs_only_when_given_volumes() -> None:
    state = PortfolioState(cash=100_000.0, holdings={})
    targets = Targets({"BTC/USDT": 0.5}, "bull", {"BTC/USDT": 0.05})
    params = StrategyParams(cost_benefit_margin=0.0)
    free = risk_plan(targets, state, {"BTC/USDT": 50_000.0}, RULES, params, 0.001)
    capped = risk_plan(targets, state, {"BTC/USDT": 50_000.0}, RULES, params, 0.001, volumes={"BTC/USDT": 5.0},
                       max_participation=0.1)
    (planned,) = [x.qty for x in free.legs]  # about half the equity at 50,000
    assert 0.9 < planned < 1.0
    assert [x.qty for x in capped.legs] == [0.5]
    assert any(r.startswith(f"participation cap: BTC/USDT buy cut from {planned:.8g} to 0.5") for r in capped.reasons)
    assert not any(r.startswith("participation cap") for r in free.reasons)
    assert capped.gate == free.gate == "pass"


def test_risk_and_the_backtest_default_to_the_same_cap() -> None:
    from aura.strategy.capacity import DEFAULT_MAX_PARTICIPATION
    from shared.config import Settings

    assert Settings().max_participation == DEFAULT_MAX_PARTICIPATION == 0.10


def test_what_earlier_plans_sent_on_the_bar_is_taken_off_its_room() -> None:
    leg = Leg("BTC/USDT", "sell", 0.2, 50_000.0, "kill_switch")
    kept, reasons = cap_legs([leg], {"BTC/USDT": 2.0}, 0.1, RULES, sent={"BTC/USDT": 0.15})
    assert [x.qty for x in kept] == [0.05]
    assert reasons == ["participation cap: BTC/USDT sell cut from 0.2 to 0.05 (0.1 of the decision bar's volume 2, "
                       "0.15 of it sent already)"]
    used_up, why = cap_legs([leg], {"BTC/USDT": 2.0}, 0.1, RULES, sent={"BTC/USDT": 0.2})
    assert used_up == [] and "dropped" in why[0]
