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
