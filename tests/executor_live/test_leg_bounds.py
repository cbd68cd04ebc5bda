"""Live-path cases audits found, through run_plan + CcxtBroker + the simulator:

* a plan the journal lost (a lost WAL), delivered again by the bus, is looked up before it is placed: the
  reconciliation's dust allowance hides a small leg's surplus, and Binance accepts a clientOrderId again once
  its first order has filled, so placing it blind filled it twice;
* a stop-loss exit is not cut by ``max_order_usdt`` (the most one order may *spend*: an exit spends nothing and
  leaving most of the position open is what it exists to prevent), and a plan a cap did cut is "partial";
* a quote-amount buy's minimum notional is checked on what the venue will fill (the amount cut to the quote
  precision, the quantity floored to the lot step), so a leg that passes is not rejected there for NOTIONAL;
* a leg beyond the venue's largest market order (maxQty) goes out cut to it, never refused at every try, and a
  coin worth a millionth of a dollar trades at all (the simulator's flat maxQty of 9e6 once capped PEPE at 13 USDT);
* a pair whose venue takes no quote-amount market buys is not bought (by quantity it could spend past the cap).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from decimal import Decimal

import pytest

from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.client_order_id import client_order_id
from services.executor.exchange_calls import ExecutionLimits
from services.executor.execution import execute_plan
from services.executor.runner import PlanRun, run_plan
from shared.contracts import PlanBody
from tests.executor_live.conftest import LIMITS, Rig
from tests.executor_live.test_live_guards import LIVE, live_run, plan_at

pytestmark = pytest.mark.integration


def _run(rig: Rig, plan: PlanBody, redelivered: bool) -> PlanRun:
    async def scenario(b: CcxtBroker) -> PlanRun:
        return await run_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log, {}, live=LIVE,
                              redelivered=redelivered)

    return rig.run(scenario)


@pytest.mark.parametrize("rig", [{"duplicate_scope": "open"}], indirect=True)  # Binance's own rule
def test_a_plan_the_journal_lost_is_looked_up_before_it_is_placed_again(rig: Rig) -> None:
    eth = rig.price("ETH/USDT")
    plan = plan_at(rig, [("ETH/USDT", "buy", 0.0025, eth)])  # about 6 USDT: inside any dust allowance
    before_plan = sqlite3.connect(":memory:")
    rig.journal.db.backup(before_plan)
    assert _run(rig, plan, redelivered=False).status == "executed"
    assert rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1}
    held = rig.server.sim.free("ETH")
    # Killed before the ack, and the WAL with every commit of the plan lost: the journal is as it was before.
    before_plan.backup(rig.journal.db)
    assert rig.journal.plan_status(plan.plan_id) is None
    run = _run(rig, plan, redelivered=True)  # the bus delivers it again (num_delivered 2)
    assert rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1}, "one clientOrderId filled twice"
    assert rig.server.sim.free("ETH") == held
    assert run.status == "executed"  # found and journaled: the journal holds the coins again
    assert rig.journal.intent_state(client_order_id(plan.plan_id, 0))[0] == "filled"


def test_a_stop_loss_exit_is_not_cut_by_the_per_order_cap(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    assert live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 0.05, btc)])).status == "executed"  # about 2,100 USDT
    held = rig.server.sim.free("BTC")
    capped = ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 500.0})
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "sell", float(held), btc, "stop_loss")]), capped)
    assert rig.server.sim.free("BTC") * Decimal(str(btc)) < 1, run.reasons  # all of it (a lot step's dust left)
    assert run.status == "executed"


def test_a_leg_the_per_order_cap_cut_makes_the_plan_partial(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    usdt = rig.server.sim.free("USDT")
    capped = ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 500.0})
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.05, btc)])
    run = live_run(rig, plan, capped)
    assert usdt - rig.server.sim.free("USDT") <= Decimal("500")
    assert run.status == "partial", run.reasons  # never reported as executed: the target was not reached
    assert any("max_order_usdt" in r for r in run.reasons)

    async def finished_after_a_restart(b: CcxtBroker) -> str:  # its leg final, the plan's status not yet written
        return (await execute_plan(plan, b, rig.journal, await b.load_markets(), capped, rig.log)).status

    assert rig.run(finished_after_a_restart) == "partial"
    # The boot's reconciliation journals a fill with its own reason (the cap's note gone): still partial.
    rig.journal.begin()
    rig.journal.set_intent_status(client_order_id(plan.plan_id, 0), "filled", "reconciled at boot")
    rig.journal.commit()
    assert rig.run(finished_after_a_restart) == "partial"
    assert rig.server.sim.free("BTC") > 0
    # A rotation exit is still cut (only protective exits are not): what it leaves is partial too.
    sell = live_run(rig, plan_at(rig, [("BTC/USDT", "sell", float(rig.server.sim.free("BTC")), btc, "exit")]),
                    ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 200.0}))
    assert sell.status == "partial" and rig.server.sim.free("BTC") > 0


def test_a_buy_that_passes_the_minimum_notional_check_is_not_refused_for_it(rig: Rig) -> None:
    eth = rig.price("ETH/USDT")
    _, ask = rig.server.sim.market.bid_ask("ETHUSDT")
    rule = rig.server.sim.market.rules["ETHUSDT"]
    # Lots of 0.0001 ETH near the minimum: the smallest whose cost at the ask clears 5 USDT + 1%, and the one
    # above it.  Bought with a quote amount of qty * ask cut to the cent, each buys a lot less.
    low = (rule.min_notional * Decimal("1.01") / ask / rule.step_size).to_integral_value(rounding="ROUND_CEILING")
    qty_low, qty_next = float(low * rule.step_size), float((low + 1) * rule.step_size)
    low_run = live_run(rig, plan_at(rig, [("ETH/USDT", "buy", qty_low, eth)]))
    next_run = live_run(rig, plan_at(rig, [("ETH/USDT", "buy", qty_next, eth)]))
    for run in (low_run, next_run):
        assert not any("rejected" in r for r in run.reasons), run.reasons  # never a NOTIONAL rejection there
    status, why, _ = rig.journal.intent_state(client_order_id(low_run.plan_id, 0))
    assert status == "skipped" and "minimum notional" in why, why  # a step less would not clear the minimum
    assert rig.journal.intent_state(client_order_id(next_run.plan_id, 0))[0] == "filled"


@pytest.mark.parametrize("rig", [{"symbols": ("BTCUSDT", "PEPEUSDT")}], indirect=True)
def test_a_stop_loss_beyond_the_largest_market_order_goes_out_cut_to_it(rig: Rig) -> None:
    pepe = rig.price("PEPE/USDT")
    bought = live_run(rig, plan_at(rig, [("PEPE/USDT", "buy", 500 / pepe, pepe)]))
    assert bought.status == "executed", bought.reasons
    held = rig.server.sim.free("PEPE")
    assert float(held) * pepe > 450
    with rig.server.sim.lock:  # the venue lowers its largest order below the position
        rules = rig.server.sim.market.rules
        rules["PEPEUSDT"] = dataclasses.replace(rules["PEPEUSDT"], max_qty=held / 4)
    stop = plan_at(rig, [("PEPE/USDT", "sell", float(held), pepe, "stop_loss")])
    run = live_run(rig, stop)
    assert not any("rejected" in r for r in run.reasons), run.reasons
    assert run.status == "partial" and any("largest market order" in r for r in run.reasons), run.reasons
    sold = held - rig.server.sim.free("PEPE")
    assert held / 5 < sold <= held / 4, (held, sold)

    async def finished_after_a_restart(b: CcxtBroker) -> str:  # its leg final, the plan's status not yet written
        return (await execute_plan(stop, b, rig.journal, await b.load_markets(), LIMITS, rig.log)).status

    assert rig.run(finished_after_a_restart) == "partial"  # never reported executed with most of it still held
    rig.journal.begin()  # the boot's reconciliation journals the fill with its own reason
    rig.journal.set_intent_status(client_order_id(stop.plan_id, 0), "filled", "reconciled at boot")
    rig.journal.commit()
    assert rig.run(finished_after_a_restart) == "partial"


def test_a_pair_without_quote_amount_market_buys_is_not_bought_and_says_so(rig: Rig) -> None:
    """Binance refuses a quote-amount market buy on a pair whose quoteOrderQtyMarketAllowed is false (it once did
    on every pair): each buy was sent and rejected, plan after plan.  The rule carries the flag: the buy is skipped
    with the reason (bought by quantity, a move before the match could spend past the cap), the plan is partial,
    and the pair's sells and the other pairs' buys go on."""
    rig.server.sim.market.no_quote_orders.add("ETHUSDT")
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 0.01, btc), ("ETH/USDT", "buy", 0.2, eth)]))
    assert run.status == "partial" and not any("rejected" in r for r in run.reasons), run.reasons
    assert any("no quote-amount market buys on ETH/USDT" in r for r in run.reasons), run.reasons
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"]
    assert rig.journal.intent_state(client_order_id(run.plan_id, 1))[0] == "skipped"
    plan = plan_at(rig, [("ETH/USDT", "buy", 0.2, eth)])
    assert live_run(rig, plan).status == "partial"

    async def finished_after_a_restart(b: CcxtBroker) -> str:
        return (await execute_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log)).status

    assert rig.run(finished_after_a_restart) == "partial"
