"""Spending is bounded at the exchange's price, and old plans are refused by the exchange's clock (live mode),
through run_plan + CcxtBroker + the simulator.

The incidents: a BTC buy planned at 15,590 filled at 67,767 (the plan's price was 2020's), and with a cap of 500
a TRX buy filled for 2,199.91 USDT, because the cap and the quantity were computed at the plan's price.  Now
each new leg reads the exchange's price first; a leg priced too far from it is refused ([PRICE_GUARD]); buys
spend a quote amount (quoteOrderQty) checked against the cap and the journal's free cash at that price.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from aura.exchange_sim import Fault
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.exchange_calls import ExecutionLimits
from services.executor.runner import LivePolicy, PlanRun, SyncCheck, run_plan
from shared.contracts import PlanBody, PlanLeg, plan_id_for
from tests.executor_live.conftest import LIMITS, Rig

pytestmark = pytest.mark.integration
DAY = 86_400_000
LIVE = LivePolicy(max_price_deviation=0.02, max_spread=0.01, plan_max_age_ms=2 * DAY + 300_000, bar_ms=DAY)


def exchange_now(rig: Rig) -> int:
    return int(rig.server.sim.now_ms())


def plan_at(rig: Rig, legs: list[tuple[Any, ...]], as_of_ms: int | None = None) -> PlanBody:
    """A plan of (symbol, side, qty, reference price[, leg reason]) legs made on the bar that just closed by the
    exchange's clock, unless ``as_of_ms``."""
    rig.plans += 1
    fields: dict[str, Any] = {
        "cycle_id": f"live-{rig.plans}", "as_of_ms": as_of_ms if as_of_ms is not None else exchange_now(rig) - DAY,
        "data_digest": "d", "target_id": "t", "params_version": 0, "params_digest": "p",
        "basis_snapshot_id": f"b-{rig.plans}", "gate": "pass", "halted": False, "reasons": [],
        "prices": {leg[0]: leg[3] for leg in legs},
        "legs": [PlanLeg(i, leg[0], leg[1], leg[2], leg[3], leg[4] if len(leg) > 4 else "test")
                 for i, leg in enumerate(legs)]}
    return PlanBody(plan_id=plan_id_for(fields), **fields)


def live_run(rig: Rig, plan: PlanBody, limits: ExecutionLimits = LIMITS) -> PlanRun:
    async def scenario(b: CcxtBroker) -> PlanRun:
        return await run_plan(plan, b, rig.journal, await b.load_markets(), limits, rig.log, {}, live=LIVE)

    return rig.run(scenario)


def spent(rig: Rig, before: Decimal) -> Decimal:
    return before - rig.server.sim.free("USDT")


def test_a_plan_priced_90x_off_spends_nothing(rig: Rig) -> None:
    """A signed plan whose BTC price is the exchange's / 90 would buy 90x the coins: every such leg is refused."""
    btc = rig.price("BTC/USDT")
    before = rig.server.sim.free("USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 90 * 1000 / btc, btc / 90)])  # 1,000 USDT at the plan's price
    run = live_run(rig, plan)
    assert rig.posts() == 0, "an order reached the exchange"
    assert spent(rig, before) == 0
    assert run.status == "partial" and any("price guard" in r for r in run.reasons), run.reasons
    assert rig.journal.intent_state(f"{rig.journal.db.execute('SELECT client_order_id FROM intents').fetchone()[0]}"
                                    )[0] == "skipped"
    assert rig.journal.db.execute("SELECT count(*) FROM events WHERE kind='price_guard'").fetchone()[0] == 1
    assert rig.records.fields("PRICE_GUARD")


def test_a_huge_buy_at_the_right_price_spends_at_most_the_cap(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    before = rig.server.sim.free("USDT")
    capped = ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 500.0})
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 1.0, btc)]), capped)  # ~1 BTC wanted
    assert run.status == "partial", run.reasons  # the cap cut it short of the target
    assert Decimal("490") <= spent(rig, before) <= Decimal("500"), spent(rig, before)
    assert any("capped at max_order_usdt=500" in r or "buy limited" in r for r in run.reasons), run.reasons


def test_a_plan_never_spends_more_than_the_journals_free_cash(rig: Rig) -> None:
    """The journal holds 10,000 USDT; the plan wants 2 x 6,000: the second buy gets what is left, not more."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    rig.server.sim.set_balance("USDT", 50_000)  # the exchange has more: the journal's cash is the limit
    before = rig.server.sim.free("USDT")
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 6000 / btc, btc), ("ETH/USDT", "buy", 6000 / eth, eth)]))
    assert spent(rig, before) <= Decimal("10000"), spent(rig, before)
    assert spent(rig, before) >= Decimal("9900")  # the second buy used what was left (less its fee margin)
    assert any("buy limited" in r for r in run.reasons), run.reasons


@pytest.mark.parametrize("rig", [{"spread_bps": 400}], indirect=True)
def test_a_market_with_a_wide_book_is_not_traded(rig: Rig) -> None:
    """A book 4% wide (bid and ask 2% either side of the last price): the plan's price equals the last price,
    so a check against the last trade alone lets the buy through, and the market order pays the ask, 2% above
    what risk planned with (more on a thin book).  The spread guard refuses it before anything is sent; once
    the book narrows, the same leg trades, at the ask."""
    btc = rig.price("BTC/USDT")
    before = rig.server.sim.free("USDT")
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc)]))
    assert rig.posts() == 0 and spent(rig, before) == 0, "an order reached the exchange"
    assert run.status == "partial" and any("spread of 4.00%" in r for r in run.reasons), run.reasons
    event = rig.journal.db.execute("SELECT detail FROM events WHERE kind='price_guard'").fetchone()
    assert event is not None and '"ask"' in event[0] and '"bid"' in event[0], event
    assert any("spread" in f.get("reason", "") for f in rig.records.fields("PRICE_GUARD"))

    rig.server.sim.configure(spread_bps=20)  # 0.2% wide: a normal book
    bid, ask = (float(x) for x in rig.server.sim.market.bid_ask("BTCUSDT"))
    run = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc)]))
    assert run.status == "executed", run.reasons
    fill = rig.journal.db.execute("SELECT price FROM fills").fetchone()
    assert fill is not None and fill[0] == pytest.approx(ask) and fill[0] > bid


@pytest.mark.parametrize("rig", [{"jitter_bps": 3000}], indirect=True)
def test_a_fill_that_slipped_past_the_guard_stops_the_plans_further_buys(rig: Rig) -> None:
    """A market order has no price limit: on a thin book it walks past the ask (here the simulator's jitter fills
    up to 30% worse).  The first buy's average is compared with the ask read just before it; past the deviation
    the plan's next buy is not sent (the book is thinner than the plan assumed), journaled and logged."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc), ("ETH/USDT", "buy", 500 / eth, eth)])
    run = live_run(rig, plan)
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"], "the second buy reached the exchange"
    assert run.status == "partial" and any("no further buys" in r for r in run.reasons), run.reasons
    event = rig.journal.db.execute("SELECT detail FROM events WHERE kind='fill_slippage'").fetchone()
    assert event is not None and '"BTC/USDT"' in event[0], event
    assert any("no further buys" in f.get("reason", "") for f in rig.records.fields("PRICE_GUARD"))
    rig.server.sim.configure(jitter_bps=0)  # the book deep again: the next plan buys
    assert live_run(rig, plan_at(rig, [("ETH/USDT", "buy", 500 / eth, eth)])).status == "executed"


def test_a_plan_on_data_older_than_a_bar_plus_the_grace_is_refused(rig: Rig) -> None:
    btc = rig.price("BTC/USDT")
    old = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc)], as_of_ms=exchange_now(rig) - 3 * DAY)
    run = live_run(rig, old)
    assert run.status == "rejected" and run.refusal == "stale_plan", run.reasons
    assert rig.posts() == 0
    assert rig.journal.plan_status(old.plan_id) == "rejected"
    assert rig.records.fields("STALE_PLAN")
    fresh = plan_at(rig, [("BTC/USDT", "buy", 0.01, btc)])
    assert live_run(rig, fresh).status == "executed"


class _Crash(BaseException):
    """The process dies (nothing after it runs, no except clause of the executor catches it)."""


class _CrashAfterPlace:
    """The broker, except that the process dies right after the exchange accepted an order, before journaling."""

    def __init__(self, inner: CcxtBroker) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def place_market_order(self, *args: Any, **kwargs: Any) -> Any:
        await self.inner.place_market_order(*args, **kwargs)
        raise _Crash


def crash_after_placing(rig: Rig, plan: PlanBody) -> None:
    """Run ``plan`` live until the exchange has accepted its first order, then die before journaling it."""
    async def crash(b: CcxtBroker) -> str:
        try:
            await run_plan(plan, _CrashAfterPlace(b), rig.journal, await b.load_markets(), LIMITS, rig.log, {},
                           live=LIVE)
        except _Crash:
            return "crashed"
        return "finished"

    assert rig.run(crash) == "crashed"


def reboot(rig: Rig, sync: SyncCheck | None = None) -> list[PlanRun]:
    """The executor's boot path: reconcile the open intents, then finish the interrupted plans."""
    from services.executor.runner import recover

    async def boot(b: CcxtBroker) -> list[PlanRun]:
        return await recover(rig.journal, b, await b.load_markets(), LIMITS, rig.log, {}, live=LIVE, sync=sync)

    return rig.run(boot)


class _CrashBeforeSending(_CrashAfterPlace):
    """The broker, except that the process dies when the first leg reads its live price: the plan is journaled as
    executing, its legs pending, nothing sent."""

    async def fetch_quotes(self, *args: Any, **kwargs: Any) -> Any:
        raise _Crash


def test_a_plan_that_never_reached_the_exchange_is_checked_against_the_balances_at_boot(rig: Rig) -> None:
    """A crash before a plan's first order, then a position leaves the account while the executor is down: the
    boot finished the plan without the sync guard a new plan gets, trading on books the exchange no longer
    matches.  It is checked as a new plan is, and refused."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    assert live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 0.05, btc)])).status == "executed"
    plan = plan_at(rig, [("ETH/USDT", "buy", 0.5, eth)])

    async def crash(b: CcxtBroker) -> str:
        try:
            await run_plan(plan, _CrashBeforeSending(b), rig.journal, await b.load_markets(), LIMITS, rig.log, {},
                           live=LIVE)
        except _Crash:
            rig.journal.rollback()
            return "crashed"
        return "finished"

    assert rig.run(crash) == "crashed" and rig.journal.plan_status(plan.plan_id) == "executing"
    rig.server.sim.set_balance("BTC", "0")  # the position left the account (outside this system)
    posts = rig.posts()
    runs = reboot(rig, SyncCheck(confirm_reads=3, max_reads=6, delay_s=0.01))
    assert [r.status for r in runs] == ["rejected"] and "sync guard" in runs[0].reasons[-1], runs
    assert rig.posts() == posts, "an order was sent although the books disagree"


def test_a_plan_resumed_after_a_crash_never_spends_more_than_the_journals_cash(rig: Rig) -> None:
    """A sell still working at a crash: the boot's reconciliation journals its fills so far, and the resumed plan
    starts its budget from the journal's cash, which holds them.  Counting them again when the order is finished
    (they were, before) let the plan's next buy spend about 6,000 USDT the journal did not have."""
    from services.executor.runner import journal_portfolio

    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    assert live_run(rig, plan_at(rig, [("BTC/USDT", "buy", 9000 / btc, btc)])).status == "executed"
    book = journal_portfolio(rig.journal)
    held, cash0 = book.holdings["BTC/USDT"], book.cash
    # The account holds more USDT than the journal trades (it trades at most the configured capital).
    rig.server.sim.set_balance("USDT", Decimal(str(cash0)) + 50_000)
    rig.server.sim.configure(market_fill_chunks=3)  # market orders fill in three trades: a sell is found working
    plan = plan_at(rig, [("BTC/USDT", "sell", held, btc), ("ETH/USDT", "buy", 30_000 / eth, eth)])

    crash_after_placing(rig, plan)
    runs = reboot(rig)
    assert [r.plan_id for r in runs] == [plan.plan_id]
    after = journal_portfolio(rig.journal)
    proceeds = held * btc
    assert after.cash >= 0, f"the resumed plan spent more than the journal's cash: {after.cash:.2f} left"
    # The buy was cut to the cash the plan had (the journal's and the sell's proceeds), not skipped.
    assert after.holdings.get("ETH/USDT", 0.0) * eth > 0.9 * (cash0 + proceeds) - 200, after


def test_a_venue_that_cannot_buy_by_quote_amount_still_spends_at_most_the_journals_cash(rig: Rig) -> None:
    """Without ccxt's createMarketBuyOrderWithCost (Bitstamp, Gemini, Bitfinex...) a buy goes out by quantity:
    the quantity must be cut to what the budget buys.  It was not: two 6,000 USDT buys on 10,000 of journal cash
    spent 11,999.40."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    rig.server.sim.set_balance("USDT", 50_000)  # the account holds more than the journal trades
    before = rig.server.sim.free("USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 6000 / btc, btc), ("ETH/USDT", "buy", 6000 / eth, eth)])

    async def scenario(b: CcxtBroker) -> PlanRun:
        b.exchange.has = {**b.exchange.has, "createMarketBuyOrderWithCost": False}
        return await run_plan(plan, b, rig.journal, await b.load_markets(), LIMITS, rig.log, {}, live=LIVE)

    run = rig.run(scenario)
    spent_now = spent(rig, before)
    assert Decimal("9000") < spent_now <= Decimal("10000"), f"spent {spent_now} of the journal's 10,000"
    assert any("buy limited" in r for r in run.reasons), run.reasons


@pytest.mark.parametrize("rig", [{"jitter_bps": 3000}], indirect=True)
def test_a_slipped_fills_stop_holds_when_the_plan_is_delivered_again(rig: Rig) -> None:
    """The stop is journaled with the slipped fill: a plan that fails after it (here the next leg's balance read)
    and is delivered again buys nothing more, though the slipped leg is final and not checked again."""
    btc, eth = rig.price("BTC/USDT"), rig.price("ETH/USDT")
    plan = plan_at(rig, [("BTC/USDT", "buy", 500 / btc, btc), ("ETH/USDT", "sell", 0.1, eth),
                         ("ETH/USDT", "buy", 500 / eth, eth)])

    async def fails_after_the_slip(broker: CcxtBroker) -> str:
        place = broker.place_market_order

        async def placed_then_account_down(*args: Any, **kwargs: Any) -> Any:
            order = await place(*args, **kwargs)
            rig.server.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", count=None, status=503))
            return order

        broker.place_market_order = placed_then_account_down  # type: ignore[method-assign]
        try:
            await run_plan(plan, broker, rig.journal, await broker.load_markets(), LIMITS, rig.log, {}, live=LIVE)
        except Exception as exc:  # the sell's balance unreadable: the plan is left for its redelivery
            rig.journal.rollback()
            return type(exc).__name__
        return "no error"

    assert rig.run(fails_after_the_slip) == "TransientBrokerError"
    rig.server.sim.faults.clear()
    live_run(rig, plan)  # the redelivery, with a new process's guard
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"], "the redelivered plan bought"
    assert rig.journal.db.execute("SELECT status FROM intents WHERE side='buy' AND symbol='ETH/USDT'").fetchone()[0] \
        == "skipped"
