"""A plan under way when the executor stopped, resumed against the simulator through run_plan + CcxtBroker, and
the live price guard's one exception (protective exits).

The incidents (found by review, each a way real money is lost):
* a journal that lost its newest commits (a lost WAL: the "sent" of a leg that reached the exchange) made the
  resumed plan place that leg again under the same clientOrderId, which Binance accepts once the first order
  has filled: a double fill;
* a plan interrupted by a days-long outage sent its remaining legs when the exchange came back, on data days old;
* the price guard held back stop-loss and kill-switch sells in exactly the markets they exist for (a gap past
  the deviation, a book gone wide).
"""

from __future__ import annotations

import pytest

from services.executor.runner import SyncCheck
from tests.executor_live.conftest import Rig
from tests.executor_live.test_live_guards import crash_after_placing, live_run, plan_at, reboot

pytestmark = pytest.mark.integration


def sim_orders(rig: Rig) -> int:
    return len(rig.server.sim.orders())


def test_a_resumed_plan_looks_up_a_leg_its_journal_lost(rig: Rig) -> None:
    """With the boot's sync guard on, as in production: the account holds more USDT than the journal trades (the
    capital setting caps what AURA uses), so the lost buy's USDT leaves no shortfall the guard could see."""
    btc = rig.price("BTC/USDT")
    rig.server.sim.set_balance("USDT", 50_000)
    plan = plan_at(rig, [("BTC/USDT", "buy", 1000 / btc, btc)])
    crash_after_placing(rig, plan)  # the buy filled on the exchange; the process died before journaling it
    assert rig.posts() == 1
    # The journal lost its newest commits (the WAL went with the crash): the plan reads as executing, its legs as
    # never recorded, so the boot's reconciliation has no intent to look up.
    rig.journal.begin()
    rig.journal.db.execute("DELETE FROM intents WHERE plan_id=?", (plan.plan_id,))
    rig.journal.commit()

    runs = reboot(rig, SyncCheck(confirm_reads=3, max_reads=6, delay_s=0.01))
    assert [r.status for r in runs] == ["executed"], runs
    assert rig.posts() == 1 and sim_orders(rig) == 1, "the leg was placed a second time"
    filled = rig.journal.db.execute("SELECT count(*), sum(qty * price) FROM fills").fetchone()
    assert filled[0] >= 1 and 990 <= filled[1] <= 1000, filled  # the exchange's fill, journaled once
    assert any("not placing it again" in m for m in rig.records.tagged("IDEMPOTENCY"))


def test_a_resumed_plan_on_data_too_old_settles_what_was_sent_and_sends_nothing_more(rig: Rig) -> None:
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 1000 / btc, btc), ("ETH/USDT", "buy", 1000 / eth, eth)])
    crash_after_placing(rig, plan)  # the BTC buy reached the exchange; the ETH buy was never sent
    rig.server.sim.advance(3)  # the executor (or the exchange) was away for three days

    runs = reboot(rig)
    assert [r.status for r in runs] == ["partial"], runs
    assert rig.posts() == 1, "a leg of a three-day-old plan was sent"
    states = dict(rig.journal.db.execute("SELECT symbol, status FROM intents WHERE plan_id=?", (plan.plan_id,)))
    assert states == {"BTC/USDT": "filled", "ETH/USDT": "skipped"}, states
    assert any("stale plan" in r and "ETH/USDT" in r for r in runs[0].reasons), runs[0].reasons
    assert rig.records.fields("STALE_PLAN")


def test_a_plan_too_old_at_boot_whose_journal_lost_the_send_is_settled_not_refused(rig: Rig) -> None:
    """The buy filled on the exchange, the process died, and the journal lost its newest commits: the plan reads as
    executing with its leg pending, as if nothing reached the exchange, and three days later its data is too old.
    Refused as a plan that never reached the exchange, its leg would be closed without a lookup and the fill's
    price and fee lost (an audit asked; run_plan alone would).  The boot's reconciliation looks every open intent up
    first, pending ones included: the fill is journaled, the plan settled, nothing more sent."""
    btc = rig.price("BTC/USDT")
    rig.server.sim.set_balance("USDT", 50_000)
    plan = plan_at(rig, [("BTC/USDT", "buy", 1000 / btc, btc)])
    crash_after_placing(rig, plan)
    assert rig.posts() == 1
    rig.journal.begin()
    rig.journal.db.execute("UPDATE intents SET status='pending' WHERE plan_id=?", (plan.plan_id,))
    rig.journal.commit()
    assert not rig.journal.plan_reached_exchange(plan.plan_id)
    rig.server.sim.advance(3)

    runs = reboot(rig)
    assert [r.status for r in runs] != ["rejected"], runs
    assert rig.posts() == 1, "a leg was sent again"
    states = dict(rig.journal.db.execute("SELECT symbol, status FROM intents WHERE plan_id=?", (plan.plan_id,)))
    assert states == {"BTC/USDT": "filled"}, states
    filled = rig.journal.db.execute("SELECT count(*), sum(qty * price) FROM fills").fetchone()
    assert filled[0] >= 1 and 990 <= filled[1] <= 1000, filled  # the exchange's fill, journaled once


@pytest.mark.parametrize("rig", [{"spread_bps": 600}], indirect=True)
def test_a_stop_loss_exit_goes_out_through_a_wide_book_and_a_rotation_sell_does_not(rig: Rig) -> None:
    """A 6% book and the bid 3% under risk's price: a rotation exit waits for a sane market; a stop-loss exit is
    the loss limit and is sent, with what the guard saw journaled and logged."""
    rig.server.sim.configure(spread_bps=0)
    btc = rig.price("BTC/USDT")
    assert live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 2000 / btc, btc)])).status == "executed"
    held = float(rig.server.sim.free("BTC"))
    rig.server.sim.configure(spread_bps=600)
    posts = rig.posts()

    rotation = live_run(rig, plan_at(rig, [("BTC/USDT", "sell", held / 2, btc, "exit")]))
    assert rotation.status == "partial" and rig.posts() == posts, rotation.reasons
    assert any("spread of 6.00%" in r for r in rotation.reasons), rotation.reasons

    stop = live_run(rig, plan_at(rig, [("BTC/USDT", "sell", held / 2, btc, "stop_loss")]))
    assert stop.status == "executed" and rig.posts() == posts + 1, stop.reasons
    assert float(rig.server.sim.free("BTC")) == pytest.approx(held / 2, rel=1e-3)
    kinds = [k for (k,) in rig.journal.db.execute("SELECT kind FROM events WHERE kind LIKE 'price_guard%'")]
    assert kinds == ["price_guard", "price_guard_overridden"], kinds
    assert any(f.get("leg_reason") == "stop_loss" for f in rig.records.fields("PRICE_GUARD"))


@pytest.mark.parametrize("rig", [{"jitter_bps": 3000}], indirect=True)
def test_a_fill_that_slipped_before_a_crash_still_stops_the_plans_further_buys(rig: Rig) -> None:
    """The process dies between the exchange's answer and the fill's commit, on a book thin enough that the first
    buy filled far past the ask read before it.  The boot's reconciliation journals that fill; the resumed plan
    holds it to the price read with its send (journaled then) and buys nothing more, as the uninterrupted plan
    would (test_live_guards.py::test_a_fill_that_slipped_past_the_guard_stops_the_plans_further_buys)."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc), ("ETH/USDT", "buy", 500 / eth, eth)])
    crash_after_placing(rig, plan)  # the BTC buy filled (slipped) on the exchange; nothing journaled after "sent"
    assert sim_orders(rig) == 1

    runs = reboot(rig)
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"], "the resumed plan bought on into that book"
    assert [r.status for r in runs] == ["partial"] and any("no further buys" in r for r in runs[0].reasons), runs
    states = dict(rig.journal.db.execute("SELECT symbol, status FROM intents WHERE plan_id=?", (plan.plan_id,)))
    assert states == {"BTC/USDT": "filled", "ETH/USDT": "skipped"}, states
    slipped = rig.journal.db.execute("SELECT count(*) FROM events WHERE kind='fill_slippage'").fetchone()[0]
    assert slipped == 1
    assert any("journaled at boot" in m for m in rig.records.tagged("PRICE_GUARD"))

    reboot(rig)  # judged once: a second boot finds nothing left to judge or to buy
    assert sim_orders(rig) == 1
    assert rig.journal.db.execute("SELECT count(*) FROM events WHERE kind='fill_slippage'").fetchone()[0] == 1
