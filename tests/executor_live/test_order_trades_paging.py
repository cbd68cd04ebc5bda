"""An order found after a restart gets its fills from the exchange's trade list (GET myTrades?orderId=...),
which Binance answers a page at a time.  An order matched in more pieces than one page was journaled short
(500 of 600 fills: 0.110 BTC booked against 0.136 held) while its intent and plan were marked final; now the
pages are read on (``fromId``) until one comes back short.  The page is made small here so that an order of
600 fills takes seven pages."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.executor.brokers import ccxt_broker
from services.executor.runner import journal_portfolio
from tests.executor_live.conftest import Rig
from tests.executor_live.test_live_guards import crash_after_placing, plan_at, reboot

pytestmark = pytest.mark.integration


def test_an_order_of_more_fills_than_a_page_is_journaled_whole(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccxt_broker, "TRADES_PAGE", 100)
    btc = rig.price("BTC/USDT")
    rig.server.sim.configure(market_fill_chunks=600)
    plan = plan_at(rig, [("BTC/USDT", "buy", 6000 / btc, btc)])

    crash_after_placing(rig, plan)
    for _ in range(700):  # the exchange matches the rest while the executor is down
        rig.server.sim.step()
    runs = reboot(rig)
    assert [r.status for r in runs] == ["executed"], runs
    assert rig.journal.count("fills") == 600
    held = journal_portfolio(rig.journal).holdings["BTC/USDT"]
    assert Decimal(str(held)) == rig.server.sim.free("BTC"), "the journal's BTC is not the exchange's"


def test_an_order_answer_without_its_trades_is_never_final_with_fills_short(rig: Rig) -> None:
    """An order found after a restart, filled, while the trade list has not caught up (myTrades answers empty):
    the intent became final with no fill, the journal kept the cash and never held the coins.  Now the order is
    looked up again until its trades are there."""
    from aura.exchange_sim import Fault
    from services.executor.brokers.client_order_id import client_order_id

    btc = rig.price("BTC/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 1000 / btc, btc)])
    cid = client_order_id(plan.plan_id, 0)
    crash_after_placing(rig, plan)
    rig.server.sim.faults.add(Fault("lagging_trades", method="GET", path="/api/v3/myTrades", count=None))
    with pytest.raises(Exception, match="after its cancel"):  # the plan waits: the order is not settled yet
        reboot(rig)
    rig.journal.rollback()
    assert rig.journal.intent_state(cid)[0] == "acked" and rig.journal.count("fills") == 0
    assert rig.records.fields("BROKER") and any("fall short" in m for m in rig.records.tagged("BROKER"))
    rig.server.sim.faults.clear()
    runs = reboot(rig)
    assert [r.status for r in runs] == ["executed"] and rig.journal.intent_state(cid)[0] == "filled"
    held = journal_portfolio(rig.journal).holdings["BTC/USDT"]
    assert held > 0 and Decimal(str(held)) == rig.server.sim.free("BTC")
    assert rig.sim_orders_by_cid() == {cid: 1}


def test_a_market_answer_without_fills_still_counts_against_the_plans_cash(rig: Rig) -> None:
    """Orders answered with their result only (newOrderRespType RESULT, as many venues answer): their fills were
    never read, so the plan's budget did not go down and a 1,000 USDT journal spent 1,800 at the exchange."""
    from services.executor.execution import execute_plan
    from services.executor.journal import Journal
    from services.executor.live_guard import LiveGuard
    from services.executor.runner import ensure_genesis
    from tests.executor_live.conftest import LIMITS

    journal = Journal(rig.journal.path.parent / "small.sqlite")  # the account holds 10,000; the journal 1,000
    ensure_genesis(journal, 1_000.0)
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 900 / btc, btc), ("ETH/USDT", "buy", 900 / eth, eth)])
    before = rig.server.sim.free("USDT")

    async def scenario(b: object) -> object:
        return await execute_plan(plan, b, journal, await b.load_markets(), LIMITS, rig.log,  # type: ignore[attr-defined]
                                  LiveGuard(0.02, 0.01, 1_000.0))

    rig.run(scenario, options={"recvWindow": 300, "newOrderRespType": {"market": "RESULT", "limit": "RESULT"}})
    spent = before - rig.server.sim.free("USDT")
    assert spent <= Decimal("1000"), f"spent {spent} USDT of a 1,000 USDT journal"
    assert journal.count("fills") >= 1
    journal.close()
