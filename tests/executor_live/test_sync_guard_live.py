"""[SYNC_GUARD] where positions are read from the broker: the executor verifies the journal's holdings against the
exchange's balances before each new plan (live mode), through run_plan + CcxtBroker + the simulator.

The dangerous read is a *plausible* one the broker cannot recognise as a glitch: after a restart (a new broker,
so no fill seen yet to date balances by) a 5xx, then a stale account snapshot from before the last fills,
showing no BTC although the journal holds some.  Acting on it would halt trading (refuse the plan) for nothing.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from aura.exchange_sim import Fault
from services.executor.brokers.base import TransientBrokerError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.client_order_id import client_order_id
from services.executor.runner import PlanRun, SyncCheck, run_plan
from shared.contracts import PlanBody
from tests.executor_live.conftest import LIMITS, Rig

pytestmark = pytest.mark.integration
ACCOUNT = ("GET", "/api/v3/account")
SYNC = SyncCheck(confirm_reads=3, max_reads=6, delay_s=0.01)


def live_plan(rig: Rig, plan: PlanBody, sync: SyncCheck = SYNC, marks: dict[str, float] | None = None) -> PlanRun:
    """One executor process life: a fresh broker (as after a restart), run_plan with the live sync check."""

    async def scenario(b: CcxtBroker) -> PlanRun:
        return await run_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log, marks or {}, sync)

    return rig.run(scenario)


def bought_btc(rig: Rig) -> None:
    first = rig.plan(("BTC/USDT", "buy", 0.05))
    assert live_plan(rig, first).status == "executed"  # its sync read is now the simulator's last snapshot
    assert rig.server.sim.free("BTC") == Decimal("0.04995")  # 0.05 less its fee, taken in BTC


def test_stale_empty_position_right_after_a_5xx_neither_halts_nor_liquidates(rig: Rig) -> None:
    bought_btc(rig)
    rig.server.sim.faults.add(Fault("http_error", *ACCOUNT, status=503))
    rig.server.sim.faults.add(Fault("stale_balance", *ACCOUNT))  # the pre-buy snapshot: no BTC at all
    posts = rig.posts()
    plan = rig.plan(("ETH/USDT", "buy", 0.5))
    run = live_plan(rig, plan)
    # The guard read again and found the BTC: the plan ran. Without it the stale read would refuse the plan.
    assert run.status == "executed", run.reasons
    assert rig.journal.plan_status(plan.plan_id) == "executed"
    assert rig.posts() == posts + 1 and rig.server.sim.free("ETH") == Decimal("0.4995")  # 0.5 less its fee
    assert rig.server.sim.free("BTC") == Decimal("0.04995"), "a position was sold on a glitched read"
    warned = rig.records.fields("SYNC_GUARD")
    assert any(f.get("shortfall", {}).get("BTC") == pytest.approx(0.04995) for f in warned)
    assert "right after a failed read" in " ".join(str(f.get("reason")) for f in warned)
    assert not [r for r in rig.records.records if r.levelname == "ERROR" and getattr(r, "tag", "") == "SYNC_GUARD"]


def test_a_shortfall_confirmed_on_consecutive_reads_refuses_the_plan_without_trading(rig: Rig) -> None:
    bought_btc(rig)
    rig.server.sim.set_balance("BTC", "0")  # the position really left the account (outside this system)
    posts = rig.posts()
    plan = rig.plan(("ETH/USDT", "buy", 0.5))
    run = live_plan(rig, plan)
    assert run.status == "rejected" and "sync guard" in run.reasons[-1]
    assert rig.posts() == posts, "an order was sent although the books disagree"
    assert rig.journal.plan_status(plan.plan_id) == "rejected"
    snap = rig.journal.latest_snapshot()
    assert snap is not None and snap.plan_id == plan.plan_id and snap.status == "rejected"
    assert snap.holdings == {"BTC/USDT": 0.04995}  # the journal is not rewritten from one side's say-so
    assert rig.records.tagged("SYNC_GUARD")[-1].startswith("exchange balances confirmed short")
    with pytest.raises(KeyError):  # no intent was even journaled
        rig.journal.intent_state(client_order_id(plan.plan_id, 0))


def test_a_shortfall_worth_dust_does_not_refuse_every_plan(rig: Rig) -> None:
    """An exit's leftover converted to BNB on Binance's site (or withdrawn): the book check calls the books in
    agreement (dust), so no halt and no adoption could ever clear a guard that refused on it: every plan, exits
    included, was refused as out of sync while /readyz stayed green."""
    bought_btc(rig)
    rig.server.sim.set_balance("BTC", "0.04990")  # 0.00005 BTC (a few USDT) short of the journal
    plan = rig.plan(("ETH/USDT", "buy", 0.5))
    dusty = SyncCheck(confirm_reads=3, max_reads=6, delay_s=0.01, dust_quote=5.0)
    marks = {"BTC/USDT": rig.price("BTC/USDT")}  # the executor's marks: the book's last prices
    run = live_plan(rig, plan, dusty, marks)
    assert run.status == "executed", run.reasons
    assert any("dust only" in line for line in rig.records.tagged("SYNC_GUARD"))
    # Beyond dust it is a shortfall as before: 0.01 BTC (hundreds of USDT) refuses the next plan.
    rig.server.sim.set_balance("BTC", "0.03990")
    refused = live_plan(rig, rig.plan(("ETH/USDT", "buy", 0.1)), dusty, marks)
    assert refused.status == "rejected" and "sync guard" in refused.reasons[-1]


def test_reads_that_keep_failing_leave_the_plan_for_a_retry(rig: Rig) -> None:
    bought_btc(rig)
    rig.server.sim.faults.add(Fault("http_error", *ACCOUNT, status=503, count=SYNC.max_reads))
    plan = rig.plan(("ETH/USDT", "buy", 0.5))
    with pytest.raises(TransientBrokerError, match="could not be verified"):
        live_plan(rig, plan)
    assert rig.journal.plan_status(plan.plan_id) is None  # not journaled: the redelivery decides afresh
    assert live_plan(rig, plan).status == "executed"
