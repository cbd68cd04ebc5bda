"""The participation cap as live risk applies it (aura/strategy/capacity.py through risk_plan): the rule the
backtest's fill_leg applies to the bar a leg fills in, applied to the bar the plan is decided on."""

from __future__ import annotations

import math

import pytest

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
    # ETH: 0.002 ETH is 4 USDT < 5: dropped whole, so the 6,000 USDT it was to bring are missing and the 26,000 of
    # buys keep 10/13: 0.384 BTC, then capped at 10% of 2.3456 = 0.23456, floored to the 0.001 lot; 7.692 SOL.
    assert [(x.symbol, x.side, x.qty, x.reason) for x in kept] == [
        ("BTC/USDT", "buy", 0.234, "rebalance"), ("SOL/USDT", "buy", 7.692, "rebalance")]
    assert reasons == [
        "participation cap: ETH/USDT sell of 3 dropped (0.1 of the decision bar's volume 0.02 is below the "
        "exchange minimums)",
        "participation cap: BTC/USDT buy cut from 0.5 to 0.384: the sells that were to pay for it bring 6000 less",
        "participation cap: BTC/USDT buy cut from 0.384 to 0.234 (0.1 of the decision bar's volume 2.3456)",
        "participation cap: SOL/USDT buy cut from 10 to 7.692: the sells that were to pay for it bring 6000 less"]


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
    kept, reasons = cap_legs([leg], {"BTC/USDT": 2.0}, 0.1, RULES, sent={("BTC/USDT", "sell"): 0.15})
    assert [x.qty for x in kept] == [0.05]
    assert reasons == ["participation cap: BTC/USDT sell cut from 0.2 to 0.05 (0.1 of the decision bar's volume 2, "
                       "0.15 of it sent already)"]
    used_up, why = cap_legs([leg], {"BTC/USDT": 2.0}, 0.1, RULES, sent={("BTC/USDT", "sell"): 0.2})
    assert used_up == [] and "dropped" in why[0]
    # Per side: the bar's buys leave the room of an exit that may have to follow them whole.
    assert cap_legs([leg], {"BTC/USDT": 2.0}, 0.1, RULES, sent={("BTC/USDT", "buy"): 0.2}) == (
        [Leg("BTC/USDT", "sell", 0.2, 50_000.0, "kill_switch")], [])


def test_buys_shrink_by_what_a_cut_sell_will_not_bring() -> None:
    """The planner paid for the buys with the sells' proceeds: a sell the cap cuts takes its share of the buys
    with it, or the plan would spend cash it will not have (the paper broker refuses such a buy whole)."""
    legs = [Leg("SOL/USDT", "sell", 10.0, 1_000.0, "rebalance"), Leg("BTC/USDT", "buy", 0.12, 50_000.0, "rebalance"),
            Leg("ETH/USDT", "buy", 2.0, 2_000.0, "rebalance")]
    kept, reasons = cap_legs(legs, {"SOL/USDT": 20.0, "BTC/USDT": 1e6, "ETH/USDT": 1e6}, 0.1, RULES)
    # SOL: 2 of 10 sold, 8,000 USDT short; the 10,000 of buys keep 20%: 0.024 BTC and 0.4 ETH.
    assert [(x.symbol, x.side, x.qty) for x in kept] == [
        ("SOL/USDT", "sell", 2.0), ("BTC/USDT", "buy", 0.024), ("ETH/USDT", "buy", 0.4)]
    assert sum(x.qty * x.ref_price for x in kept if x.side == "buy") <= 2.0 * 1_000.0 + 1e-9
    assert reasons[1:] == ["participation cap: BTC/USDT buy cut from 0.12 to 0.024: the sells that were to pay for "
                           "it bring 8000 less", "participation cap: ETH/USDT buy cut from 2 to 0.4: the sells that "
                           "were to pay for it bring 8000 less"]


def test_a_cap_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="max_participation must be > 0"):
        cap_legs([], {}, 0.0, RULES)


def test_the_bar_count_is_kept_through_an_unreadable_bar_and_reset_by_a_new_one() -> None:
    from services.risk.bar_budget import SentInBar

    count = SentInBar()
    count.add(100, [Leg("BTC/USDT", "sell", 0.15, 1.0, "kill_switch")])
    assert count.on(None) == {("BTC/USDT", "sell"): 0.15}  # a failed read of the bar: the count holds
    count.add(None, [Leg("BTC/USDT", "sell", 0.05, 1.0, "kill_switch")])
    assert count.on(100) == {("BTC/USDT", "sell"): pytest.approx(0.2)}
    assert count.on(200) == {}
