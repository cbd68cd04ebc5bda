"""A plan in flight holds risk back, on a real secured nats-server with risk's real ``run(ctx)`` body.

Risk publishes plan A and only the executor's snapshot of it says what the book is afterwards.  Until that
snapshot appears, risk must not decide anything on the snapshot plan A was computed on: the next target waits
for it (``INFLIGHT_WAIT_S``, ``Risk.basis``) and the stop-loss tick skips ([RISK_TICK] "tick skipped: a plan is
in flight").  Otherwise the next plan is built on a book that no longer exists, and the executor's
``stale_basis`` refusal (the backstop) drops a whole cycle.

No executor runs here: the test plays it with its own bus credential and signing key, so plan A stays
unacknowledged exactly as long as the test decides, and the snapshot of plan A appears when the test publishes
it.  The snapshot plan A is planned on holds BTC bought high enough that the newest bar's close is below its
stop: a tick that acted on that stale snapshot would publish an exit plan selling the BTC again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aura.strategy.params import StrategyParams
from services.risk.tick import sl_checks
from services.signal.service import make_target
from shared.bus import publish
from shared.config import Settings
from shared.contracts import CONSUMERS, ApprovedPlan, DataReady, PlanBody, PortfolioSnapshot
from shared.signing import load_public_key, verify_plan
from tests.bus_helpers import (
    Capture,
    announce_panel,
    approved_plans,
    executor_signed,
    replay_signal_state,
    replay_snapshot,
    role_connections,
    running,
    until,
)
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PARAMS = StrategyParams()  # version 0: nothing promoted
BAR_A = 704  # bundled replay: BTC closes 10,340 on this bar (2019-07-22) and 9,865 on the next
BTC = "BTC/USDT"
BTC_HELD = 0.05  # ~5% of the book: the loss on it stays far from the kill-switch
CASH = 10_000.0
HOLD_S = 2.5  # how long risk, holding target B, must keep from signing it (INFLIGHT_WAIT_S is 10 s)
SKIP = "tick skipped: a plan is in flight"


def records(capture: Capture, tag: str, since: int = 0) -> list[dict[str, Any]]:
    """The [tag] lines logged after the first ``since`` records (their message and fields)."""
    return [{"msg": r.getMessage(), **(getattr(r, "fields", None) or {})} for r in capture.records[since:]
            if getattr(r, "tag", None) == tag]


def genesis_holding_btc(settings: Settings, entry: float, close: float) -> PortfolioSnapshot:
    """The executor's book plan A is planned on: cash and BTC bought at ``entry`` (signed with its key)."""
    equity = CASH + BTC_HELD * close
    return executor_signed(settings, PortfolioSnapshot(
        snapshot_id="s-before-a", cycle_id="genesis", plan_id="", status="genesis", cash=CASH,
        holdings={BTC: BTC_HELD}, entry_prices={BTC: entry}, equity=equity, equity_history=[equity]))


def executed(settings: Settings, basis: PortfolioSnapshot, plan: PlanBody) -> PortfolioSnapshot:
    """The executor's snapshot after filling every leg of ``plan`` at its reference price (signed with its key).
    Fees are left out: risk reads the book as the executor reports it, it never recomputes it."""
    cash, holdings, entries = basis.cash, dict(basis.holdings), dict(basis.entry_prices)
    for leg in plan.legs:
        held = holdings.get(leg.symbol, 0.0)
        if leg.side == "buy":
            entries[leg.symbol] = (held * entries.get(leg.symbol, 0.0) + leg.qty * leg.ref_price) / (held + leg.qty)
            holdings[leg.symbol] = held + leg.qty
            cash -= leg.qty * leg.ref_price
        else:
            holdings[leg.symbol] = held - leg.qty
            cash += leg.qty * leg.ref_price
    holdings = {s: q for s, q in holdings.items() if q > 1e-12}
    entries = {s: p for s, p in entries.items() if s in holdings}
    equity = cash + sum(q * plan.prices.get(s, entries[s]) for s, q in holdings.items())
    return executor_signed(settings, PortfolioSnapshot(
        snapshot_id=f"s-after-{plan.plan_id}", cycle_id=plan.cycle_id, plan_id=plan.plan_id, status="executed",
        cash=cash, holdings=holdings, entry_prices=entries, equity=equity,
        equity_history=[*basis.equity_history, equity], committed_at_ms=int(time.time() * 1000)))


async def plans_for(js_operator: Any, cycle_id: str) -> list[PlanBody]:
    return [p.plan for p in await approved_plans(js_operator) if p.plan.cycle_id == cycle_id]


def test_next_target_and_tick_wait_for_the_executors_snapshot_of_the_plan_in_flight(
        nats_server: NatsEndpoint) -> None:
    """(b) While plan A is unacknowledged, a tick on bar B's prices, which would stop out the BTC of plan A's
    basis, skips ([RISK_TICK] naming plan A) and does nothing; (a) target B, delivered to risk meanwhile, is not
    signed on plan A's basis, and is signed on the executor's snapshot of plan A once that appears."""
    settings = nats_server.settings(AURA_RISK_TICK_S="0.2", AURA_LOG_LEVEL="DEBUG")
    capture = Capture()
    cycle_a, panel_a, markets_a = replay_snapshot(BAR_A, settings.snapshot_bars)
    cycle_b, panel_b, markets_b = replay_snapshot(BAR_A + 1, settings.snapshot_bars)
    at = list(panel_a.symbols).index(BTC)
    close_a, close_b = float(panel_a.close[-1][at]), float(panel_b.close[-1][at])
    assert close_b < close_a, "the bars must fall for a stop to sit between their closes"
    # Bought high enough that bar A's close is above the stop and bar B's below it.
    entry = (close_a + close_b) / 2 / (1.0 - PARAMS.stop_loss)
    genesis = genesis_holding_btc(settings, entry, close_a)
    out: dict[str, Any] = {}

    async def scenario() -> None:
        async with role_connections(settings, "ingest", "signal", "executor", "operator", "admin") as js:
            await publish(js["executor"], genesis, msg_id=genesis.snapshot_id)
            async with running(settings, "risk", handler=capture):
                async def risk_ready() -> bool:
                    return any(x["msg"] == "risk ready" for x in capture.fields("BOOT"))

                await until(risk_ready, "the risk service to be ready", timeout=90)
                ready_a = await announce_panel(js["ingest"], panel_a, cycle_a, markets_a)

                async def ticked_on_genesis() -> bool:  # control: ticks do evaluate this book when nothing is in flight
                    return any(x["msg"] == "tick: none" and x.get("basis") == genesis.snapshot_id
                               for x in capture.fields("RISK_TICK"))

                await until(ticked_on_genesis, "a risk tick on the genesis snapshot at bar A's prices")
                state = replay_signal_state(BAR_A - 5, BAR_A - 1, PARAMS, settings.snapshot_bars)
                target_a, state = make_target(ready_a, panel_a, PARAMS, 0, state)
                await publish(js["signal"], target_a, msg_id=target_a.target_id)
                (plan_a,) = await until(lambda: plans_for(js["operator"], cycle_a), "risk to sign plan A")
                out["plan_a"] = plan_a

                async def a_logged() -> int | None:  # the log position right after [PLAN_APPROVED] of plan A
                    return next((i + 1 for i, r in enumerate(capture.records) if getattr(r, "tag", None) ==
                                 "PLAN_APPROVED" and (getattr(r, "fields", None) or {}).get("cycle_id") == cycle_a),
                                None)

                out["a_signed_at"] = signed_at = await until(a_logged, "risk to log plan A's approval")

                # (b) Bar B is announced while plan A is in flight: its close is below the genesis BTC's stop.
                ready_b: DataReady = await announce_panel(js["ingest"], panel_b, cycle_b, markets_b)
                announced_b = len(capture.records)

                async def ticked_twice() -> bool:  # skipped or decided: whatever the tick did, it logged it
                    return sum(1 for x in records(capture, "RISK_TICK", announced_b)
                               if x["msg"] == SKIP or x["msg"].startswith("tick:")) >= 2

                await until(ticked_twice, "two risk ticks after bar B's announcement", timeout=20)
                out["tick_window"] = (records(capture, "RISK_TICK", signed_at), records(capture, "SL_CHECK", signed_at))
                out["plans_in_tick_window"] = await approved_plans(js["operator"])

                # (a) Target B for the next bar, while plan A is still unacknowledged.
                target_b, _ = make_target(ready_b, panel_b, PARAMS, 0, state)
                ack = await publish(js["signal"], target_b, msg_id=target_b.target_id)
                spec = CONSUMERS["risk"]

                async def risk_holds_target_b() -> bool:
                    info = await js["admin"].consumer_info(spec.stream, spec.durable)
                    return info.delivered.stream_seq >= ack.seq

                await until(risk_holds_target_b, "target B to be delivered to risk", timeout=20)
                held_from = time.monotonic()
                early: list[PlanBody] = []
                while time.monotonic() - held_from < HOLD_S and not early:
                    early = await plans_for(js["operator"], cycle_b)
                    await asyncio.sleep(0.1)
                out["early"] = early
                info = await js["admin"].consumer_info(spec.stream, spec.durable)
                out["unacked_while_held"] = info.num_ack_pending

                # The executor's snapshot of plan A appears: target B goes on, on that book.
                after_a = executed(settings, genesis, plan_a)
                out["after_a"] = after_a
                await publish(js["executor"], after_a, msg_id=after_a.snapshot_id)
                out["plans_b"] = await until(lambda: plans_for(js["operator"], cycle_b), "risk to sign plan B")
                out["approved_b"] = [p for p in await approved_plans(js["operator"]) if p.plan.cycle_id == cycle_b]

    asyncio.run(scenario())
    plan_a: PlanBody = out["plan_a"]
    assert plan_a.basis_snapshot_id == genesis.snapshot_id

    # (b) The stale book really would be acted on: at bar B's close the genesis BTC is past its stop ...
    assert [c.verdict for c in sl_checks(genesis, {BTC: close_b}, PARAMS)] == ["stop_loss"]
    ticks, stops = out["tick_window"]
    skips = [x for x in ticks if x["msg"] == SKIP]
    assert len(skips) >= 2 and all(x.get("plan_id") == plan_a.plan_id for x in skips), ticks
    # ... yet every tick while plan A was in flight skipped: none evaluated, checked a stop or published a plan.
    assert [x for x in ticks if x["msg"] != SKIP] == [], ticks
    assert stops == [], stops
    plans_then: list[ApprovedPlan] = out["plans_in_tick_window"]
    assert [p.plan.plan_id for p in plans_then] == [plan_a.plan_id], [p.plan.cycle_id for p in plans_then]

    # (a) Risk held target B (delivered, not acked) and signed nothing for it on the old basis ...
    early: list[PlanBody] = out["early"]
    assert early == [], f"plan B signed while plan A was in flight, on basis {early[0].basis_snapshot_id}"
    assert out["unacked_while_held"] == 1
    # ... then, once the executor's snapshot of plan A appeared, signed plan B on it, and only once.
    after_a: PortfolioSnapshot = out["after_a"]
    (plan_b,) = out["plans_b"]
    assert plan_b.basis_snapshot_id == after_a.snapshot_id
    (approved_b,) = out["approved_b"]
    verify_plan(approved_b, load_public_key(settings.public_key_path))
    # A plan on the new book sells nothing that book does not hold.
    for leg in plan_b.legs:
        if leg.side == "sell":
            assert leg.qty <= after_a.holdings.get(leg.symbol, 0.0) + 1e-9, (leg, after_a.holdings)
    approvals = records(capture, "PLAN_APPROVED", out["a_signed_at"])
    assert [x["cycle_id"] for x in approvals] == [cycle_b] and approvals[0]["basis"] == after_a.snapshot_id
