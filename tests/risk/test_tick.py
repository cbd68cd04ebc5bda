"""The risk tick's pure decision: SL/TP checks, the kill-switch on the latest prices, and the sync guard on an
incomplete price read (a held symbol missing from the answer must never count as worth nothing)."""

from __future__ import annotations

import math

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aura.strategy.params import StrategyParams
from aura.strategy.types import MarketRule
from services.risk.cli import rearm_status, render_status
from services.risk.latch import LatchDoc, _LatchDocV1, after_decision, applied, rearmed, verified_latch
from services.risk.sync_guard import GuardState
from services.risk.tick import Latch, evaluate_tick, latch_view, portfolio_state, sl_checks, tick_target
from shared.contracts import MarketRuleMsg, PortfolioSnapshot
from shared.operator_requests import OperatorRequest
from shared.signing import SignatureError, sign_struct

RULES = {s: MarketRule(s, 0.0001, 0.01, 0.0001, 5.0) for s in ("BTC/USDT", "ETH/USDT")}
MARKETS = [MarketRuleMsg(s, 0.0001, 0.01, 0.0001, 5.0) for s in RULES]
PARAMS = StrategyParams(stop_loss=0.15, take_profit=0.5, kill_switch_drawdown=0.25, kill_switch_window=30)


def snapshot(**over: object) -> PortfolioSnapshot:
    fields: dict[str, object] = {
        "snapshot_id": "s-1", "cycle_id": "1d-20240101T0000", "plan_id": "p-1", "status": "executed",
        "cash": 1000.0, "holdings": {"BTC/USDT": 0.2, "ETH/USDT": 1.0},
        "entry_prices": {"BTC/USDT": 40_000.0, "ETH/USDT": 2000.0}, "equity": 11_000.0,
        "equity_history": [10_000.0, 11_000.0]}
    fields.update(over)
    return PortfolioSnapshot(**fields)  # type: ignore[arg-type]


def tick(prices: dict[str, float] | None, guard: GuardState | None = None, halted: bool = False,
         snap: PortfolioSnapshot | None = None, marks: dict[str, float] | None = None,
         reset_at_ms: int = 0):  # type: ignore[no-untyped-def]
    return evaluate_tick(snap or snapshot(), prices, RULES, PARAMS, 0.001, Latch(halted, reset_at_ms),
                         guard or GuardState(), marks or {})


def test_sl_checks_report_every_position_with_its_levels() -> None:
    checks = {c.symbol: c for c in sl_checks(snapshot(), {"BTC/USDT": 33_000.0, "ETH/USDT": 3100.0}, PARAMS)}
    assert checks["BTC/USDT"].verdict == "stop_loss" and checks["BTC/USDT"].stop_level == 34_000.0
    assert checks["ETH/USDT"].verdict == "take_profit" and checks["ETH/USDT"].take_level == 3000.0
    calm = sl_checks(snapshot(), {"BTC/USDT": 41_000.0}, PARAMS)
    assert [c.verdict for c in calm] == ["hold", "no_price"] and math.isnan(calm[1].price)


def test_quiet_tick_does_nothing() -> None:
    decision = tick({"BTC/USDT": 41_000.0, "ETH/USDT": 2100.0})
    assert decision.action == "none" and decision.outcome is not None and decision.outcome.legs == []


def test_stop_loss_on_the_latest_price_makes_an_exit() -> None:
    decision = tick({"BTC/USDT": 33_000.0, "ETH/USDT": 2100.0})
    assert decision.action == "exit" and decision.outcome is not None
    assert [(x.side, x.symbol, x.qty, x.reason) for x in decision.outcome.legs] == [
        ("sell", "BTC/USDT", 0.2, "stop_loss")]
    assert not decision.outcome.halted


def test_drawdown_on_the_latest_prices_trips_the_kill_switch() -> None:
    # 1000 cash + 0.2 BTC at 28k (5600) + 1 ETH at 1500 = 8100: 26% below the 11000 peak.
    decision = tick({"BTC/USDT": 28_000.0, "ETH/USDT": 1500.0})
    assert decision.action == "liquidate" and decision.outcome is not None
    assert decision.outcome.gate == "kill_switch"
    assert sorted(x.symbol for x in decision.outcome.legs) == ["BTC/USDT", "ETH/USDT"]


def test_a_latched_halt_liquidates_what_is_left() -> None:
    decision = tick({"BTC/USDT": 41_000.0, "ETH/USDT": 2100.0}, halted=True)
    assert decision.action == "liquidate" and decision.outcome is not None
    assert decision.outcome.gate == "halted"


def test_partial_price_read_right_after_an_error_neither_liquidates_nor_halts() -> None:
    # BTC (8000 of 11000 equity) missing from the answer: valued at nothing it would be a 73% drawdown.
    failed = tick(None)
    assert failed.action == "wait" and failed.outcome is None
    partial = tick({"ETH/USDT": 2100.0}, guard=failed.guard)
    assert partial.action == "wait" and partial.outcome is None, "acted on an unconfirmed price read"
    assert partial.price_verdict.shortfall == {"BTC/USDT": 1.0}
    assert "right after a failed read" in partial.price_verdict.reason
    back = tick({"BTC/USDT": 41_000.0, "ETH/USDT": 2100.0}, guard=partial.guard)
    assert back.action == "none"


def test_a_confirmed_missing_price_is_valued_at_its_last_mark_not_at_zero() -> None:
    guard = GuardState()
    for _ in range(2):
        decision = tick({"ETH/USDT": 2100.0}, guard=guard, marks={"BTC/USDT": 41_000.0})
        assert decision.action == "wait"
        guard = decision.guard
    decision = tick({"ETH/USDT": 2100.0}, guard=guard, marks={"BTC/USDT": 41_000.0})
    assert decision.price_verdict.status == "confirmed" and decision.outcome is not None
    assert decision.action == "none" and not decision.outcome.halted  # BTC counted at 41k, not at 0
    assert decision.outcome.equity == 1000.0 + 0.2 * 41_000.0 + 2100.0


def test_tick_target_is_deterministic_and_never_buys() -> None:
    prices = {"BTC/USDT": 33_000.0, "ETH/USDT": 2100.0}
    a = tick_target(snapshot(), prices, MARKETS, PARAMS, 3, 1_700_000_000_000, "digest")
    b = tick_target(snapshot(), dict(reversed(prices.items())), MARKETS, PARAMS, 3, 1_700_000_000_000, "digest")
    assert a == b and a.cycle_id.startswith("tick-") and a.weights == {}
    other = tick_target(snapshot(snapshot_id="s-2"), prices, MARKETS, PARAMS, 3, 1_700_000_000_000, "digest")
    assert other.cycle_id != a.cycle_id  # a new basis is a new tick cycle


# --- after an operator reset ----------------------------------------------------------------------------------

# The book right after a kill-switch liquidation: all cash, 30% under a peak still inside the 30-point window.
LIQUIDATED = snapshot(cash=7_000.0, holdings={}, entry_prices={}, equity=7_000.0,
                      equity_history=[10_000.0, 9_000.0, 7_000.0], equity_history_ms=[1_000, 2_000, 3_000])


def test_a_reset_rearms_the_kill_switch_from_the_equity_at_the_reset() -> None:
    # Without the reset point the old peak would trip it again at once: the latch could never be cleared.
    assert tick({}, snap=LIQUIDATED).outcome.gate == "kill_switch"  # type: ignore[union-attr]
    after_reset = tick({}, snap=LIQUIDATED, reset_at_ms=3_500)
    assert after_reset.action == "none" and after_reset.outcome is not None
    assert after_reset.outcome.gate != "kill_switch" and after_reset.outcome.drawdown == 0.0


def test_after_a_reset_a_new_drawdown_from_the_new_peak_still_trips_it() -> None:
    # Bought back in after the reset at t=4000 (equity 7000), then fell 30%: the re-armed switch fires.
    snap = snapshot(cash=700.0, holdings={"BTC/USDT": 0.2}, entry_prices={"BTC/USDT": 31_500.0}, equity=7_000.0,
                    equity_history=[10_000.0, 7_000.0, 7_000.0], equity_history_ms=[1_000, 3_000, 4_000])
    decision = tick({"BTC/USDT": 21_000.0}, snap=snap, reset_at_ms=3_500)  # 700 + 4200 = 4900, -30% from 7000
    assert decision.action == "liquidate" and decision.outcome is not None
    assert decision.outcome.gate == "kill_switch"


def test_equity_before_the_reset_is_left_out_and_old_snapshots_keep_their_history() -> None:
    assert portfolio_state(LIQUIDATED, Latch(False, 2_500)).equity_history == (7_000.0,)
    assert portfolio_state(LIQUIDATED, Latch(False, 0)).equity_history == (10_000.0, 9_000.0, 7_000.0)
    untimed = snapshot(equity_history=[10_000.0, 7_000.0])  # a producer without commit times
    assert portfolio_state(untimed, Latch(False, 2_500)).equity_history == (10_000.0, 7_000.0)
    assert portfolio_state(LIQUIDATED, Latch(True, 0)).halted


# --- the re-arm policy ------------------------------------------------------------------------------------------

DAY = 86_400_000


def test_a_latch_records_the_bar_it_latched_on_and_when_it_rearms() -> None:
    fired = tick({"BTC/USDT": 28_000.0, "ETH/USDT": 1500.0}).outcome
    assert fired is not None and fired.gate == "kill_switch"
    doc = after_decision(LatchDoc(halted=False), fired, "tick-a", 5 * DAY, 3, DAY, 11_000.0)
    assert (doc.halted, doc.capped, doc.latched_at_ms, doc.rearm_at_ms) == (True, False, 5 * DAY, 8 * DAY)
    assert doc.cycle_id == "tick-a" and doc.drawdown == fired.drawdown and doc.peak_equity == 11_000.0
    # A later decision while latched changes nothing: nothing to write.
    held = tick({"BTC/USDT": 28_000.0, "ETH/USDT": 1500.0}, halted=True).outcome
    assert held is not None and after_decision(doc, held, "tick-b", 6 * DAY, 3, DAY, 11_000.0) == doc
    # Cooldown 0 (the default): it never re-arms by itself; the parameters in force decide, so the latch follows.
    assert after_decision(doc, held, "tick-b", 6 * DAY, 0, DAY, 11_000.0).rearm_at_ms == 0
    # A latch whose bar is unknown (written before the policy, or latched with no data time) starts its
    # cooldown at the next decision with data, never at a guess.
    legacy = after_decision(LatchDoc(halted=True), held, "c", 9 * DAY, 3, DAY, 0.0)
    assert (legacy.latched_at_ms, legacy.rearm_at_ms) == (9 * DAY, 12 * DAY)


def test_a_rearmed_latch_measures_the_rolling_drawdown_from_the_rearm_and_the_cap_from_the_reset() -> None:
    latched = LatchDoc(halted=True, latched_at_ms=DAY, rearm_at_ms=3 * DAY, cycle_id="c", drawdown=0.3)
    doc = rearmed(latched, 3 * DAY, 3_000, 10_000.0)  # the basis was committed at 3000: its points are before
    assert (doc.halted, doc.rearm_at_ms, doc.rearmed_at_ms, doc.equity_since_ms) == (False, 0, 3 * DAY, 3_000)
    state = portfolio_state(LIQUIDATED, latch_view(doc))
    assert state.equity_history == () and not state.halted and state.peak_equity == 10_000.0
    calm = evaluate_tick(LIQUIDATED, {}, RULES, PARAMS, 0.001, latch_view(doc), GuardState(), {})
    assert calm.outcome is not None and not calm.outcome.halted and calm.outcome.drawdown == 0.0
    # ... while a cap of 25% still sees the 10,000 peak since the (never made) reset: 30% under it, latched for good
    capped = msgspec.structs.replace(PARAMS, kill_switch_cap=0.25)
    out = evaluate_tick(LIQUIDATED, {}, RULES, capped, 0.001, latch_view(doc), GuardState(), {}).outcome
    assert out is not None and out.halted and out.capped
    after = after_decision(doc, out, "tick-c", 4 * DAY, 3, DAY, 10_000.0)
    assert after.halted and after.capped and after.rearm_at_ms == 0 and after.latched_at_ms == 4 * DAY
    # An operator reset clears even a capped latch, and the cap's peak restarts from there.
    reset = applied(after, OperatorRequest(requested_at_ms=5_000, requested_by="operator:x", reason="r"))
    assert (reset.halted, reset.capped, reset.peak_equity, reset.equity_since_ms) == (False, False, 0.0, 5_000)


def test_status_says_how_the_latch_clears() -> None:
    assert rearm_status(LatchDoc(halted=False)) == {"rearm": None}
    timed = rearm_status(LatchDoc(halted=True, latched_at_ms=DAY, rearm_at_ms=3 * DAY))
    assert timed["rearm_at"] == "1970-01-04T00:00Z" and "by itself" in timed["rearm"]
    assert "cooldown is 0" in rearm_status(LatchDoc(halted=True, latched_at_ms=DAY))["rearm"]
    assert "capped" in rearm_status(LatchDoc(halted=True, capped=True))["rearm"]


def test_a_latch_signed_before_the_rearm_policy_still_verifies_and_nothing_can_be_added_to_it() -> None:
    key = Ed25519PrivateKey.generate()
    old = sign_struct(_LatchDocV1(halted=True, cycle_id="c", drawdown=0.3, reset_at_ms=7), key)
    raw = msgspec.json.encode(old)
    doc = verified_latch(raw, key.public_key())
    assert doc.halted and doc.cycle_id == "c" and doc.latched_at_ms == 0 and not doc.capped
    tampered = msgspec.json.encode({**msgspec.to_builtins(old), "rearm_at_ms": 1})  # not covered by its signature
    with pytest.raises(SignatureError):
        verified_latch(tampered, key.public_key())
    new = sign_struct(LatchDoc(halted=True, latched_at_ms=DAY, rearm_at_ms=3 * DAY), key)
    assert verified_latch(msgspec.json.encode(new), key.public_key()) == new
    with pytest.raises(SignatureError):
        verified_latch(msgspec.json.encode(msgspec.structs.replace(new, rearm_at_ms=DAY)), key.public_key())


def test_risk_status_reads_as_sentences_and_never_calls_an_unverified_latch_armed() -> None:
    """`aura risk status` for a person: a latch that does not verify is said so, and read as latched (risk does);
    a reset risk has not applied yet is shown with who asked and why."""
    bad = LatchDoc(halted=True, capped=True, reset_at_ms=1704067200000)  # what read_latch gives for a bad one
    forged = {**msgspec.to_builtins(bad), **rearm_status(bad), "problem": "signature does not verify",
              "pending_reset": {"requested_at_ms": 1704153600000, "by": "operator:ann", "reason": "checked"}}
    text = render_status(forged)
    assert text.startswith("WARNING: the stored latch does not verify (signature does not verify)"), text
    assert "kill-switch: LATCHED" in text
    assert "clears only by `aura risk reset` (the stored latch does not verify)" in text
    assert "cooldown" not in text, text  # not the re-arm policy's reason: the document is unreadable
    assert "reset requested 2024-01-02T00:00Z by operator:ann (checked)" in text
    armed = LatchDoc(halted=False, rearmed_at_ms=1704153600000)
    text = render_status({**msgspec.to_builtins(armed), **rearm_status(armed)})
    assert text.splitlines() == ["kill-switch: armed (trading)",
                                 "  re-armed by itself at the bar of 2024-01-02T00:00Z"]
