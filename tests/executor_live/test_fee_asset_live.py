"""Fees in the asset received, through run_plan + CcxtBroker (ccxt over HTTP) + the simulator + the sync guard.

Binance without a BNB discount takes a buy's fee out of the coins bought (0.1 BTC bought, 0.0999 BTC credited)
and a sell's out of the USDT received.  A journal that charged every fee to cash believed in coins that did not
exist: the live sync guard then confirmed a "shortfall" and refused every later plan, stop-loss and kill-switch
exits included, and a full exit left a phantom remainder.  The journal's books must equal the exchange's
balances exactly, whichever asset the fee was taken in.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.runner import PlanRun, SyncCheck, expected_balances, run_plan
from shared.contracts import PlanBody
from tests.executor_live.conftest import LIMITS, Rig

pytestmark = pytest.mark.integration
SYNC = SyncCheck(confirm_reads=3, max_reads=6, delay_s=0.01)
ASSETS = ("USDT", "BTC", "ETH")


def live_plan(rig: Rig, plan: PlanBody) -> PlanRun:
    """One executor process life: a fresh broker, run_plan with the live sync check before the plan."""

    async def scenario(b: CcxtBroker) -> PlanRun:
        return await run_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log, {}, SYNC)

    return rig.run(scenario)


def exchange_balances(rig: Rig) -> dict[str, float]:
    """Free + locked per asset, as the simulator's 8-decimal books hold them; assets at zero left out."""
    sim = rig.server.sim
    with sim.lock:
        totals = {a: sim.balances.free.get(a, Decimal(0)) + sim.balances.locked.get(a, Decimal(0)) for a in ASSETS}
    return {a: float(v) for a, v in totals.items() if v or a == "USDT"}


def assert_books_agree(rig: Rig) -> None:
    journal = expected_balances(rig.journal)
    assert journal == exchange_balances(rig), "the journal's balances are not the exchange's, to the last unit"


@pytest.mark.parametrize("rig", [{}, {"fee_asset": "quote"}, {"market_fill_chunks": 3}], indirect=True,
                         ids=["fee-in-received-asset", "fee-in-quote", "received-in-chunks"])
def test_journal_equals_the_exchange_after_buys_and_sells_and_the_guard_lets_the_next_plan_run(rig: Rig) -> None:
    in_base = rig.server.sim.config.fee_asset == "received"
    bought = live_plan(rig, rig.plan(("BTC/USDT", "buy", 0.1), ("ETH/USDT", "buy", 0.5)))
    assert bought.status == "executed", bought.reasons
    assert rig.server.sim.free("BTC") == (Decimal("0.0999") if in_base else Decimal("0.1"))
    assert_books_agree(rig)
    fills = rig.journal.db.execute("SELECT symbol, fee, fee_base, fee_quote FROM fills ORDER BY rowid").fetchall()
    for _symbol, fee, fee_base, fee_quote in fills:  # each fee in exactly one asset, and still valued in USDT
        assert (fee_base > 0) is in_base and (fee_quote > 0) is not in_base and fee > 0

    # The strategy plans from the journal: a full BTC exit sells the journal's whole holding and must leave
    # nothing behind, and the sync guard before it must find the journal's holdings on the exchange.
    pf_btc = expected_balances(rig.journal)["BTC"]
    sold = live_plan(rig, rig.plan(("BTC/USDT", "sell", pf_btc), ("ETH/USDT", "sell", 0.2)))
    assert sold.status == "executed", sold.reasons
    assert not any("sync guard" in r or "clamped" in r for r in sold.reasons), sold.reasons
    assert rig.server.sim.free("BTC") == 0
    snap = rig.journal.latest_snapshot()
    assert snap is not None and "BTC/USDT" not in snap.holdings  # no phantom remainder
    assert_books_agree(rig)

    # And the plan after that runs too: no shortfall the guard could confirm, nothing refused.
    after = live_plan(rig, rig.plan(("ETH/USDT", "buy", 0.1)))
    assert after.status == "executed", after.reasons
    assert_books_agree(rig)
    assert not [r for r in rig.records.records if getattr(r, "tag", "") == "SYNC_GUARD" and r.levelname != "INFO"]
