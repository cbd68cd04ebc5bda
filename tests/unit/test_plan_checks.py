"""Each rule of shared/plan_checks.py refuses what it should and nothing a planner makes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared.contracts import PlanBody, PlanLeg, plan_id_for
from shared.cycles import check_data_time, cycle_id_for
from shared.plan_checks import MAX_PLAN_LEGS, plan_cycle_refusal, plan_shape_refusal


def plan(legs: list[PlanLeg], cycle_id: str = "c", as_of_ms: int = 0) -> PlanBody:
    fields: dict[str, Any] = {
        "cycle_id": cycle_id, "as_of_ms": as_of_ms, "data_digest": "d", "target_id": "t", "params_version": 0,
        "params_digest": "p", "basis_snapshot_id": "b", "gate": "pass", "halted": False, "reasons": [],
        "prices": {}, "legs": legs}
    return PlanBody(plan_id=plan_id_for(fields), **fields)


def test_a_planners_plan_passes() -> None:
    """Stops and rotation sells first, then buys, one leg per symbol (what pipeline.plan_core emits)."""
    legs = [PlanLeg(0, "SOL/USDT", "sell", 3.0, 150.0, "stop_loss"),
            PlanLeg(1, "ETH/USDT", "sell", 0.5, 3000.0, "exit"), PlanLeg(2, "BTC/USDT", "buy", 0.01, 60_000.0, "exit")]
    assert plan_shape_refusal(plan(legs)) == ""
    assert plan_shape_refusal(plan([])) == ""  # a hold: nothing to trade


@pytest.mark.parametrize(("legs", "said"), [
    ([PlanLeg(0, "BTC/USDT", "buy", 0.01, 1.0, "x"), PlanLeg(1, "BTC/USDT", "buy", 0.01, 1.0, "x")],
     "legs 0 and 1 both buy 'BTC/USDT'"),
    ([PlanLeg(0, "ETH/USDT", "sell", 1.0, 1.0, "x"), PlanLeg(1, "BTC/USDT", "buy", 1.0, 1.0, "x"),
      PlanLeg(2, "ETH/USDT", "sell", 1.0, 1.0, "x")], "legs 0 and 2 both sell 'ETH/USDT'"),
    ([PlanLeg(1, "BTC/USDT", "buy", 0.01, 1.0, "x")], "leg 0 is numbered 1"),
    ([PlanLeg(0, "ETH/BTC", "buy", 1.0, 0.05, "x")], "trades 'ETH/BTC', not a USDT pair"),
    ([PlanLeg(0, "BTCUSDT", "buy", 1.0, 1.0, "x")], "trades 'BTCUSDT', not a USDT pair"),
    ([PlanLeg(0, "/USDT", "buy", 1.0, 1.0, "x")], "not a USDT pair"),
    ([PlanLeg(0, "BTC/USDT", "short", 0.01, 1.0, "x")], "side 'short', not buy or sell"),
    ([PlanLeg(0, "BTC/USDT", "buy", float("nan"), 1.0, "x")], "quantity nan"),
    ([PlanLeg(0, "BTC/USDT", "buy", -1.0, 1.0, "x")], "quantity -1.0"),
    ([PlanLeg(0, "BTC/USDT", "sell", 1.0, float("inf"), "x")], "reference price inf"),
    ([PlanLeg(0, "BTC/USDT", "sell", 1.0, 0.0, "x")], "reference price 0.0"),
    ([PlanLeg(i, f"C{i}/USDT", "buy", 1.0, 1.0, "x") for i in range(MAX_PLAN_LEGS + 1)],
     f"more than the {MAX_PLAN_LEGS}"),
])
def test_a_shape_no_planner_makes_is_refused(legs: list[PlanLeg], said: str) -> None:
    assert said in plan_shape_refusal(plan(legs))


def test_a_plan_whose_id_is_not_the_digest_of_its_contents_is_refused() -> None:
    """A signed plan reusing another plan's id (one still executing) would be taken for that plan's redelivery."""
    genuine = plan([PlanLeg(0, "BTC/USDT", "buy", 0.01, 60_000.0, "enter")])
    other = msgspec.structs.replace(genuine, legs=[PlanLeg(0, "ETH/USDT", "buy", 1.0, 3000.0, "enter")])
    assert plan_shape_refusal(genuine) == ""
    assert "is not the digest of the plan's contents" in plan_shape_refusal(other)


def test_a_plan_risk_builds_keeps_its_id_through_the_wire() -> None:
    """The executor checks the id on the decoded plan: risk's body must digest the same after encode and decode,
    even when a quantity or price reached it as an int (JSON gives it back as a float)."""
    from types import SimpleNamespace

    from services.risk.plan_body import build_plan_body
    from shared.contracts import ApprovedPlan, decode, encode

    target = SimpleNamespace(cycle_id="1d-20240102T0000", as_of_ms=1_704_153_600_000, data_digest="d", target_id="t",
                             params_digest="p", prices={"BTC/USDT": 40_000, "ETH/USDT": 2_000.5})
    outcome = SimpleNamespace(gate="pass", halted=False, reasons=["rebalance"],
                              legs=[SimpleNamespace(symbol="BTC/USDT", side="buy", qty=1, ref_price=40_000,
                                                    reason="enter")])
    body = build_plan_body(target, SimpleNamespace(snapshot_id="s-1"), outcome, 3,  # type: ignore[arg-type]
                           target.prices)  # type: ignore[arg-type]
    wire = decode(encode(ApprovedPlan(plan=body, signature="", key_id="")), ApprovedPlan).plan
    assert plan_shape_refusal(wire) == "" and wire.plan_id == body.plan_id


DAY = 86_400_000
BAR = 1_704_153_600_000  # 2024-01-02 00:00
BUY = PlanLeg(0, "BTC/USDT", "buy", 0.01, 60_000.0, "enter")
SELL = PlanLeg(0, "BTC/USDT", "sell", 0.01, 60_000.0, "stop_loss")


def test_a_bar_plan_must_be_named_by_its_bar_and_a_tick_may_only_sell() -> None:
    """A compromised risk holds the signing key: under fresh ids, every plan was a "new cycle" the executor traded
    once (a stream of buys and sells, fees without end), and a far-future bar id became the journal's newest
    cycle.  Only a bar's plan may buy, named by the bar its data names (one a bar); a tick's plan only exits."""
    assert plan_cycle_refusal(plan([BUY], cycle_id_for("1d", BAR), BAR), "1d") == ""
    assert plan_cycle_refusal(plan([SELL], "tick-0123456789abcdef", BAR + 5), "1d") == ""
    assert plan_cycle_refusal(plan([], cycle_id_for("1h", BAR), BAR), "1h") == ""
    assert "a tick only exits" in plan_cycle_refusal(plan([BUY], "tick-0123456789abcdef", BAR), "1d")
    for cycle_id, as_of in (("churn-17", BAR), (cycle_id_for("1d", BAR + DAY), BAR),
                            ("1d-99991231T0000", BAR), (cycle_id_for("1h", BAR), BAR)):
        assert "is neither a risk tick nor the 1d bar its data names" in \
            plan_cycle_refusal(plan([BUY], cycle_id, as_of), "1d"), cycle_id


def test_live_data_time_of_a_bar_and_of_a_tick() -> None:
    """The executor asks of a plan what risk asks of a target (shared.cycles.check_data_time): a bar's plan only
    once the bar has closed by the exchange's clock, a tick's (bar 0: a moment) not dated ahead of it."""
    max_age = 2 * DAY + 300_000
    closes = BAR + DAY
    assert check_data_time(BAR, closes + 1, DAY, max_age) is None
    assert (check_data_time(BAR, closes - 2 * 60_000, DAY, max_age) or "").startswith("future: the bar opening")
    assert (check_data_time(BAR + 365 * DAY, closes, DAY, max_age) or "").startswith("future")
    assert check_data_time(closes, closes, 0, max_age) is None  # a tick read now
    assert "dated ahead of" in (check_data_time(closes + 10 * 60_000, closes, 0, max_age) or "")
    assert (check_data_time(BAR, BAR + max_age + 1, DAY, max_age) or "").startswith("stale")
