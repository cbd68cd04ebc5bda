"""Orders a restart cannot settle are never placed again and never crash the boot: the boot path (reconcile, then
the interrupted plans) through run_plan + CcxtBroker + the simulator.

The incidents, each found by an audit against the simulator:
- an order the exchange had acknowledged (the first boot found it working) filled while the executor was down;
  at the next boot Binance answered one lookup with -2013 "Order does not exist" (it does, now and then), the
  intent went back to "unsent" and the order was placed a second time under the same clientOrderId (Binance
  refuses a duplicate id only while the first order is open): 0.03 BTC bought for a 0.02 plan;
- an order request answered "Duplicate order sent." (-2010: the exchange holds the id) and then a lookup
  answered -2013: the order was taken as never placed and sent again under the same id once the first had
  filled, 0.01996 BTC bought for a 0.00999 leg and one of them missing from the journal;
- a pair that left the exchange's list while the journal held an intent for it made every boot raise
  OrderRejectedError (-1121): the executor exited, its supervisor started it again, and so on.
"""

from __future__ import annotations

from typing import Any

import pytest

from aura.exchange_sim import Fault
from services.executor.brokers.base import RateLimitedError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.client_order_id import client_order_id
from services.executor.exchange_calls import OrderUnresolved
from services.executor.outage import is_exchange_outage
from services.executor.reconcile import reconcile
from services.executor.runner import PlanRun, journal_portfolio, run_plan
from tests.executor_live.conftest import LIMITS, Rig
from tests.executor_live.test_live_guards import LIVE, crash_after_placing, live_run, plan_at, reboot

pytestmark = pytest.mark.integration
NOT_FOUND = '{"code":-2013,"msg":"Order does not exist."}'


def intent_status(rig: Rig, cid: str) -> str:
    return rig.journal.intent_state(cid)[0]


def booked_once(rig: Rig, runs: list[PlanRun], cid: str, more_than: float) -> None:
    """The plan executed with its one BTC order filled, placed once, and the journal holds what the exchange does."""
    assert [r.status for r in runs] == ["executed"] and intent_status(rig, cid) == "filled"
    assert rig.sim_orders_by_cid() == {cid: 1}
    held = journal_portfolio(rig.journal).holdings["BTC/USDT"]
    assert held == pytest.approx(float(rig.server.sim.free("BTC")), abs=1e-8) and held > more_than


def reboot_fails(rig: Rig) -> BaseException:
    try:
        reboot(rig)
    except Exception as exc:  # what boot_when_possible sees
        rig.journal.rollback()
        return exc
    raise AssertionError("the boot settled an order it could not look up")


@pytest.mark.parametrize("rig", [{"market_fill_chunks": 2, "fill_on_query": False, "duplicate_scope": "open"}],
                         indirect=True)
def test_an_order_the_exchange_acknowledged_is_never_placed_again_on_a_not_found(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.02, btc)])
    cid = client_order_id(plan.plan_id, 0)
    crash_after_placing(rig, plan)  # accepted, half filled, not journaled

    async def first_boot(b: CcxtBroker) -> dict[str, int]:  # dies right after reconciling: the order is working
        return await reconcile(rig.journal, b, rig.log, LIMITS)

    assert rig.run(first_boot)["found"] == 1 and intent_status(rig, cid) == "acked"
    rig.server.sim.step()  # the rest fills while the executor is down
    # Every lookup answers "no such order": the boot's reconciliation and the resumed plan's, each a lookup and
    # the second one that must agree before a "not found" is believed.
    rig.server.sim.faults.add(Fault("http_error", method="GET", path="/api/v3/order", status=400, body=NOT_FOUND,
                                    count=4))
    exc = reboot_fails(rig)
    assert isinstance(exc, OrderUnresolved) and is_exchange_outage(exc)  # the boot waits, /readyz red
    assert "acknowledged by the exchange" in str(exc)
    assert rig.sim_orders_by_cid() == {cid: 1} and intent_status(rig, cid) == "acked"
    assert any(f.get("cid") == cid for f in rig.records.fields("RECONCILE"))

    runs: list[PlanRun] = reboot(rig)  # the exchange answers again: the order is found, filled, journaled once
    booked_once(rig, runs, cid, 0.019)


@pytest.mark.parametrize("rig", [{"duplicate_scope": "open"}], indirect=True)
def test_a_duplicate_answer_then_a_not_found_is_never_placed_again(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc)])
    cid = client_order_id(plan.plan_id, 0)
    # The first request is booked (and fills) but answered as a duplicate; the lookup that follows says -2013.
    rig.server.sim.faults.add(Fault("http_error", method="POST", path="/api/v3/order", status=400, process=True,
                                    body='{"code":-2010,"msg":"Duplicate order sent."}'))
    rig.server.sim.faults.add(Fault("http_error", method="GET", path="/api/v3/order", status=400, body=NOT_FOUND))
    with pytest.raises(OrderUnresolved, match="duplicate order") as caught:
        live_run(rig, plan)
    assert is_exchange_outage(caught.value)  # the plan waits (unacked, /readyz red), it is not dead-lettered
    assert rig.sim_orders_by_cid() == {cid: 1} and intent_status(rig, cid) == "acked"
    rig.journal.rollback()

    booked_once(rig, reboot(rig), cid, 0.0099)  # the lookup answers again: found and journaled, placed once


@pytest.mark.parametrize("rig", [{"duplicate_scope": "open"}], indirect=True)
def test_a_placement_answered_whose_fills_were_unreadable_is_never_placed_again(rig: Rig) -> None:
    """The exchange answered the placement (booked and filled), reading its fills was rate limited, and the next
    three lookups by its id said -2013.  Taken for a lost request, the order was sent again under the same id
    (Binance accepts it once the first is closed): two orders, twice the leg spent (found by an audit).  It is
    journaled as acknowledged instead, the plan waits as in an outage, and the next lookup finds it: placed once."""
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc)])
    cid = client_order_id(plan.plan_id, 0)
    rig.server.sim.faults.add(Fault("http_error", method="GET", path="/api/v3/order", status=400, body=NOT_FOUND,
                                    count=3))

    async def scenario(broker: CcxtBroker) -> PlanRun:
        read = broker._state

        async def rate_limited_once(*args: Any, **kwargs: Any) -> Any:  # the answer's fills read: a 429
            broker._state = read  # type: ignore[method-assign]
            raise RateLimitedError("429 reading the order's trades", retry_after_s=0.0)

        broker._state = rate_limited_once  # type: ignore[method-assign]
        return await run_plan(plan, broker, rig.journal, await broker.load_markets(), LIMITS, rig.log, {}, live=LIVE)

    with pytest.raises(OrderUnresolved, match="answered the placement") as caught:
        rig.run(scenario)
    assert is_exchange_outage(caught.value)  # the plan waits (unacked, /readyz red), it is not dead-lettered
    assert rig.sim_orders_by_cid() == {cid: 1} and intent_status(rig, cid) == "acked"
    rig.journal.rollback()

    booked_once(rig, reboot(rig), cid, 0.9 * 500 / btc)  # the lookup answers again: found, placed once


@pytest.mark.parametrize("rig", [{"duplicate_scope": "open"}], indirect=True)
def test_a_lost_answer_then_one_not_found_is_looked_up_again_before_a_resend(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc)])
    cid = client_order_id(plan.plan_id, 0)
    # Booked, but its answer lost (a 503 after processing); the first lookup after the settle wait says -2013.
    rig.server.sim.faults.add(Fault("http_error", method="POST", path="/api/v3/order", status=503, process=True,
                                    body='{"code":-1001,"msg":"Internal error"}'))
    rig.server.sim.faults.add(Fault("http_error", method="GET", path="/api/v3/order", status=400, body=NOT_FOUND,
                                    count=2))  # the lookup before the settle wait ends and the first one after it
    run = live_run(rig, plan)
    assert run.status == "executed" and rig.sim_orders_by_cid() == {cid: 1}
    held = journal_portfolio(rig.journal).holdings["BTC/USDT"]
    assert held == pytest.approx(float(rig.server.sim.free("BTC")), abs=1e-8) and held > 0.0099


def test_a_pair_delisted_under_a_never_sent_leg_is_skipped_not_a_crash_loop(rig: Rig) -> None:
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc), ("ETH/USDT", "buy", 0.1, eth)])
    crash_after_placing(rig, plan)  # BTC accepted; the ETH leg journaled "pending", never sent
    eth_cid = client_order_id(plan.plan_id, 1)
    assert intent_status(rig, eth_cid) == "pending"
    rig.server.sim.market.delisted.add("ETHUSDT")
    runs = reboot(rig)
    assert [r.status for r in runs] == ["partial"]
    assert intent_status(rig, client_order_id(plan.plan_id, 0)) == "filled"
    assert intent_status(rig, eth_cid) == "skipped"
    assert rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1}
    assert any("not listed by the venue" in reason for reason in runs[0].reasons)


def test_a_pair_delisted_under_a_sent_order_makes_the_boot_wait_not_crash(rig: Rig) -> None:
    eth = rig.price("ETH/USDT")
    plan = plan_at(rig, [("ETH/USDT", "buy", 0.1, eth)])
    cid = client_order_id(plan.plan_id, 0)
    crash_after_placing(rig, plan)
    rig.server.sim.market.delisted.add("ETHUSDT")
    for _ in range(2):  # every boot: the same wait, nothing placed, nothing forgotten
        exc = reboot_fails(rig)
        assert isinstance(exc, OrderUnresolved) and is_exchange_outage(exc), repr(exc)
        assert "cannot be looked up" in str(exc)
        assert intent_status(rig, cid) == "sent" and rig.sim_orders_by_cid() == {cid: 1}
    rig.server.sim.market.delisted.discard("ETHUSDT")  # listed again (or the operator settles it)
    runs = reboot(rig)
    assert [r.status for r in runs] == ["executed"] and intent_status(rig, cid) == "filled"
