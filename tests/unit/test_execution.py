"""Executor idempotency with the paper broker and a real SQLite journal (faults injected by wrappers)."""

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aura.strategy.types import MarketRule
from services.executor.brokers.base import (
    AmbiguousOrderError,
    CredentialsRejected,
    OrderState,
    Quote,
    TransientBrokerError,
)
from services.executor.brokers.client_order_id import CLIENT_ORDER_ID_RE, client_order_id
from services.executor.brokers.paper import PaperBroker
from services.executor.exchange_calls import ExecutionLimits
from services.executor.execution import execute_plan
from services.executor.journal import Journal
from services.executor.leg_bounds import CAPPED, MAX_QTY, clamp_leg
from services.executor.portfolio import portfolio_from_fills
from services.executor.reconcile import reconcile
from shared.contracts import PlanBody, PlanLeg, plan_id_for

LOG = logging.getLogger("test")
RULES = {"BTC/USDT": MarketRule("BTC/USDT", 0.00001, 0.01, 0.00001, 5.0),
         "ETH/USDT": MarketRule("ETH/USDT", 0.0001, 0.01, 0.0001, 5.0)}
LIMITS = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0)


def plan(legs: list[PlanLeg], cycle: str = "1d-20240101T0000") -> PlanBody:
    fields = {"cycle_id": cycle, "as_of_ms": 0, "data_digest": "d", "target_id": "t", "params_version": 1,
              "params_digest": "p", "basis_snapshot_id": "s", "gate": "pass", "halted": False, "legs": legs,
              "reasons": [], "prices": {"BTC/USDT": 40000.0, "ETH/USDT": 2000.0}}
    return PlanBody(plan_id=plan_id_for(fields), **fields)  # type: ignore[arg-type]


BUYS = [PlanLeg(0, "BTC/USDT", "buy", 0.1, 40000.0, "enter"), PlanLeg(1, "ETH/USDT", "buy", 2.0, 2000.0, "enter")]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture()
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.sqlite")
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    return j


class CountingPaper(PaperBroker):
    """The paper venue, counting every placement request. The paper broker itself refuses a clientOrderId it
    has seen and dedups fills by trade id, so its books alone would hide an executor that resends: the count
    of requests is what shows it."""

    def __init__(self, *a: object, **k: object) -> None:
        super().__init__(*a, **k)  # type: ignore[arg-type]
        self.place_calls = 0

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        self.place_calls += 1
        return await super().place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)


def paper(cash: float = 10_000.0, **held: float) -> CountingPaper:
    return CountingPaper({"USDT": cash, **held}, RULES, fee_rate=0.001, slippage_bps=0.0)


def test_redelivered_plan_never_places_twice(journal: Journal) -> None:
    broker = paper()
    p = plan(BUYS)
    first = run(execute_plan(p, broker, journal, RULES, LIMITS, LOG))
    again = run(execute_plan(p, broker, journal, RULES, LIMITS, LOG))
    assert len(first.new_fills) == 2 and again.new_fills == []
    assert journal.count("fills") == 2 and journal.count("orders") == 2
    assert len(broker.orders) == 2 and broker.place_calls == 2


class AcceptThenTimeout(CountingPaper):
    """The exchange accepts the order but the answer is lost, once."""

    def __init__(self, *a: object, **k: object) -> None:
        super().__init__(*a, **k)  # type: ignore[arg-type]
        self.lost = 0

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        state = await super().place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)
        if self.lost == 0:
            self.lost += 1
            raise AmbiguousOrderError("read timed out after the request was sent")
        return state


def test_ambiguous_timeout_is_resolved_by_lookup_not_resend(journal: Journal) -> None:
    broker = AcceptThenTimeout({"USDT": 10_000.0}, RULES, fee_rate=0.001, slippage_bps=0.0)
    result = run(execute_plan(plan(BUYS), broker, journal, RULES, LIMITS, LOG))
    assert broker.lost == 1
    assert len(result.new_fills) == 2 and len(broker.orders) == 2
    assert broker.place_calls == 2, "the ambiguous order was resent instead of looked up"
    assert broker.balances["BTC"] == pytest.approx(0.1)


def test_crash_after_send_is_reconciled_at_boot(journal: Journal) -> None:
    broker = paper()
    p = plan(BUYS)
    cid = client_order_id(p.plan_id, 0)
    # Simulate a crash right after the order reached the exchange: intent "sent", nothing else journaled.
    journal.begin()
    journal.record_intent(cid, p.cycle_id, p.plan_id, 0, "BTC/USDT", "buy", 0.1, 40000.0, status="sent")
    journal.commit()
    run(broker.place_market_order("BTC/USDT", "buy", 0.1, cid, 40000.0))
    counts = run(reconcile(journal, broker, LOG, LIMITS))
    assert counts == {"open": 1, "found": 1, "unsent": 0, "new_fills": 1, "unreachable": 0, "unresolved": 0}
    result = run(execute_plan(p, broker, journal, RULES, LIMITS, LOG))
    assert [f[2] for f in result.new_fills] == ["ETH/USDT"]  # the BTC leg is not placed again
    assert journal.count("fills") == 2 and len(broker.orders) == 2
    assert broker.place_calls == 2  # the one made before the "crash", then ETH only


def test_intent_never_sent_is_marked_unsent_and_then_placed_once(journal: Journal) -> None:
    broker = paper()
    p = plan(BUYS[:1])
    journal.begin()
    journal.record_intent(client_order_id(p.plan_id, 0), p.cycle_id, p.plan_id, 0, "BTC/USDT", "buy", 0.1, 40000.0)
    journal.commit()
    assert run(reconcile(journal, broker, LOG, LIMITS))["unsent"] == 1
    run(execute_plan(p, broker, journal, RULES, LIMITS, LOG))
    assert journal.count("fills") == 1


class FlakyBalances(PaperBroker):
    def __init__(self, *a: object, failures: int = 2, **k: object) -> None:
        super().__init__(*a, **k)  # type: ignore[arg-type]
        self.failures = failures

    async def fetch_free_balances(self) -> dict[str, float]:
        if self.failures > 0:
            self.failures -= 1
            raise TransientBrokerError("balance endpoint 503")
        return await super().fetch_free_balances()


def test_sell_clamp_retries_a_failed_balance_read_and_clamps(journal: Journal) -> None:
    broker = FlakyBalances({"USDT": 0.0, "BTC": 0.05}, RULES, fee_rate=0.001, slippage_bps=0.0, failures=2)
    sell = plan([PlanLeg(0, "BTC/USDT", "sell", 0.0512, 40000.0, "exit")])
    result = run(execute_plan(sell, broker, journal, RULES, LIMITS, LOG))
    assert broker.failures == 0
    assert result.status == "executed", result.reasons
    assert broker.balances["BTC"] == pytest.approx(0.0)
    assert "clamped" in " ".join(result.reasons)


def test_a_leg_beyond_the_exchanges_largest_market_order_goes_out_in_pieces() -> None:
    """Stop-loss and kill-switch exits are never cut by the per-order cap, but one beyond the venue's maxQty was
    refused (-1013) at every tick, and the exit never happened: cut to the largest order (with the margin a
    quote-amount buy needs), the rest at the next plan."""
    import dataclasses

    rule = dataclasses.replace(RULES["BTC/USDT"], max_qty=0.05)
    stop = PlanLeg(0, "BTC/USDT", "sell", 0.2, 40_000.0, "stop_loss")
    qty, why = clamp_leg(stop, rule, 0.2, ExecutionLimits(max_order_usdt=1000.0))
    assert qty == pytest.approx(0.0495) and why.startswith(MAX_QTY), (qty, why)
    buy = PlanLeg(0, "BTC/USDT", "buy", 0.01, 40_000.0, "enter")
    assert clamp_leg(buy, rule, None, ExecutionLimits(max_order_usdt=1e9)) == (0.01, "")


def test_clamp_leg_rules() -> None:
    leg = PlanLeg(0, "BTC/USDT", "buy", 1.0, 40000.0, "enter")
    assert clamp_leg(leg, RULES["BTC/USDT"], None, ExecutionLimits(max_order_usdt=1000.0))[0] == 0.025
    tiny = PlanLeg(0, "BTC/USDT", "buy", 0.0001, 40000.0, "enter")
    qty, why = clamp_leg(tiny, RULES["BTC/USDT"], None, LIMITS)
    assert qty == 0.0 and "below exchange minimum" in why


def test_the_cap_never_raises_a_sell_above_what_is_held() -> None:
    """Found by a review: the cap was tested on the plan's quantity and replaced the clamped one, so a sell of
    0.05 BTC with 0.005 held and a 500 cap asked for 0.0119 BTC, more than held, and the exchange refused it."""
    cap = ExecutionLimits(max_order_usdt=500.0)
    sell = PlanLeg(0, "BTC/USDT", "sell", 0.05, 42000.0, "exit")
    assert clamp_leg(sell, RULES["BTC/USDT"], 0.005, cap) == (0.005, "sell clamped to free balance 0.005")
    qty, why = clamp_leg(sell, RULES["BTC/USDT"], 0.04, cap)  # the cap binds below what is held
    assert qty == pytest.approx(0.0119) and why.startswith(CAPPED)
    stop = PlanLeg(0, "BTC/USDT", "sell", 0.05, 42000.0, "stop_loss")  # a protective exit is not cut
    assert clamp_leg(stop, RULES["BTC/USDT"], 0.05, cap) == (0.05, "")


def test_portfolio_is_the_sum_of_fills() -> None:
    # (symbol, side, qty, price, fee in base, fee in quote)
    pf = portfolio_from_fills(1000.0, [("BTC/USDT", "buy", 0.01, 40000.0, 0.0, 0.4),
                                       ("BTC/USDT", "buy", 0.01, 20000.0, 0.0, 0.2),
                                       ("BTC/USDT", "sell", 0.01, 30000.0, 0.0, 0.3)])
    assert pf.holdings == {"BTC/USDT": 0.01}
    assert pf.entry_prices["BTC/USDT"] == pytest.approx(30000.0)
    assert pf.cash == 699.1  # 1000 - 400.4 - 200.2 + 299.7, summed in decimal like the exchange's books


def test_a_fee_comes_out_of_the_asset_it_was_taken_in() -> None:
    # Binance without BNB: buying 0.1 BTC credits 0.0999 BTC and costs exactly 0.1 * price in USDT; the sell's
    # fee comes out of the USDT received.  The journal must hold exactly what the exchange holds.
    bought = portfolio_from_fills(10_000.0, [("BTC/USDT", "buy", 0.1, 44179.55, 0.0001, 0.0)])
    assert bought.holdings == {"BTC/USDT": 0.0999} and bought.cash == 5582.045
    assert bought.entry_prices["BTC/USDT"] == pytest.approx(44179.55)  # the price paid per coin, fee aside
    sold = portfolio_from_fills(10_000.0, [("BTC/USDT", "buy", 0.1, 44179.55, 0.0001, 0.0),
                                           ("BTC/USDT", "sell", 0.0999, 44179.55, 0.0, 4.41353704)])
    assert sold.holdings == {} and sold.cash == 9991.16850796  # a full exit leaves no phantom remainder
    # A fee paid in BNB is in neither column (the journal does not track BNB): cash and coins move by the trade.
    bnb = portfolio_from_fills(10_000.0, [("BTC/USDT", "buy", 0.1, 44179.55, 0.0, 0.0)])
    assert bnb.holdings == {"BTC/USDT": 0.1} and bnb.cash == 5582.045


def test_journal_balances_equal_the_paper_venue_exactly(journal: Journal) -> None:
    broker = paper()
    legs = [PlanLeg(0, "BTC/USDT", "buy", 0.03, 40000.03, "enter"), PlanLeg(1, "ETH/USDT", "buy", 1.2345, 2000.07,
                                                                            "enter")]
    run(execute_plan(plan(legs, "c1"), broker, journal, RULES, LIMITS, LOG))
    run(execute_plan(plan([PlanLeg(0, "BTC/USDT", "sell", 0.01, 41000.01, "trim")], "c2"), broker, journal, RULES,
                     LIMITS, LOG))
    pf = portfolio_from_fills(10_000.0, journal.all_fills())
    assert pf.cash == broker.balances["USDT"]
    assert {s.split("/")[0]: q for s, q in pf.holdings.items()} == {"BTC": broker.balances["BTC"],
                                                                    "ETH": broker.balances["ETH"]}
    assert [f[4:] for f in journal.all_fills()] == [(0.0, round(0.03 * 40000.03 * 0.001, 8)),
                                                    (0.0, round(1.2345 * 2000.07 * 0.001, 8)),
                                                    (0.0, round(0.01 * 41000.01 * 0.001, 8))]


def test_a_journal_from_before_the_fee_columns_opens_with_its_books_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""CREATE TABLE fills (trade_id TEXT PRIMARY KEY, cycle_id TEXT NOT NULL,
        client_order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, qty REAL NOT NULL,
        price REAL NOT NULL, fee REAL NOT NULL, ts_ms INTEGER NOT NULL);
        INSERT INTO fills VALUES ('t1', 'c1', 'o1', 'BTC/USDT', 'buy', 0.1, 40000.0, 4.0, 1);""")
    old.commit()
    old.close()
    j = Journal(path)
    try:
        assert j.fills_for("o1") == [("t1", 0.1, 40000.0, 4.0, 0.0, 4.0)]  # the old fee was charged to cash
        assert portfolio_from_fills(10_000.0, j.all_fills()).cash == 5996.0
        assert j.record_fill("t2", "c2", "o2", "BTC/USDT", "buy", 0.1, 40000.0, 4.0, 2, fee_base=0.0001,
                             fee_quote=0.0)
    finally:
        j.close()
    j = Journal(path)  # opened again: already migrated, nothing rewritten
    try:
        assert j.fills_for("o1") == [("t1", 0.1, 40000.0, 4.0, 0.0, 4.0)]
        pf = portfolio_from_fills(10_000.0, j.all_fills())
        assert pf.holdings == {"BTC/USDT": 0.1999} and pf.cash == 1996.0
    finally:
        j.close()


def test_client_order_ids_are_deterministic_and_valid() -> None:
    ids = {client_order_id(f"p-{i}", leg) for i in range(200) for leg in range(5)}
    assert len(ids) == 1000
    assert all(CLIENT_ORDER_ID_RE.match(c) for c in ids)
    assert client_order_id("p-1", 0) == client_order_id("p-1", 0)


def test_full_exit_after_float_noisy_fills_is_not_an_overdraft(journal: Journal) -> None:
    # 0.7 - 0.4 is 0.29999999999999993 in floats: the exchange (and the paper venue) holds 0.3.
    broker = paper(cash=100_000.0)
    run(execute_plan(plan([PlanLeg(0, "BTC/USDT", "buy", 0.7, 40000.0, "enter")], "c1"), broker, journal, RULES,
                     LIMITS, LOG))
    run(execute_plan(plan([PlanLeg(0, "BTC/USDT", "sell", 0.4, 40000.0, "trim")], "c2"), broker, journal, RULES,
                     LIMITS, LOG))
    result = run(execute_plan(plan([PlanLeg(0, "BTC/USDT", "sell", 0.3, 40000.0, "exit")], "c3"), broker, journal,
                              RULES, LIMITS, LOG))
    assert result.status == "executed", result.reasons
    assert broker.balances["BTC"] == 0.0


class CancelNotFinal(CountingPaper):
    """The venue matches the order, but answers it (and its cancel) as still working until ``stuck`` is cleared:
    a cancel the exchange has not finished, or answers late."""

    stuck = True

    def _shown(self, order: OrderState | None) -> OrderState | None:
        if order is None or not self.stuck:
            return order
        return OrderState(order.client_order_id, order.exchange_order_id, order.symbol, order.side,
                          "partially_filled", order.qty, order.filled_qty, order.avg_price, order.fills)

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        return self._shown(await super().place_market_order(symbol, side, qty, client_order_id, ref_price,
                                                            quote_amount))  # type: ignore[return-value]

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return self._shown(await super().fetch_order(symbol, client_order_id))

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return self._shown(await super().cancel_order(symbol, client_order_id))


def test_an_order_still_working_after_its_cancel_stays_open_and_is_finished_on_retry(journal: Journal) -> None:
    """Journaled as final, an order still working would leave the open set and its later fills would never be
    journaled: it stays "acked" (its fills so far journaled, once), the plan is retried, and the retry finishes it
    from the exchange's answer without placing it again."""
    broker = CancelNotFinal({"USDT": 10_000.0}, RULES, fee_rate=0.001, slippage_bps=0.0)
    p = plan(BUYS[:1])
    quick = ExecutionLimits(max_order_usdt=1e9, backoff_s=0.0, fill_poll_s=0.0, fill_timeout_s=0.05)
    with pytest.raises(TransientBrokerError, match="still partially_filled after its cancel"):
        run(execute_plan(p, broker, journal, RULES, quick, LOG))
    cid = client_order_id(p.plan_id, 0)
    assert journal.intent_state(cid)[0] == "acked" and journal.count("fills") == 1
    broker.stuck = False
    done = run(execute_plan(p, broker, journal, RULES, quick, LOG))
    assert journal.intent_state(cid)[0] == "filled" and done.status == "executed"
    assert broker.place_calls == 1 and journal.count("fills") == 1


class OutageVenue:
    """A venue whose prices stop answering right after a plan's checks, for as long as ``down``."""

    name = "fake"

    def __init__(self) -> None:
        self.now, self.down, self.placed = 10 * 86_400_000, True, 0

    async def fetch_time(self) -> int:
        return self.now

    async def fetch_free_balances(self) -> dict[str, float]:
        return {"USDT": 10_000.0}

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]:
        if self.down:
            raise TransientBrokerError("503: the outage begins inside the plan")
        return {s: 40_000.0 for s in symbols}

    async def fetch_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        return {s: Quote(p, p, p) for s, p in (await self.fetch_prices(symbols)).items()}

    async def place_market_order(self, *args: object, **kwargs: object) -> OrderState:
        self.placed += 1
        raise AssertionError("a stale plan reached the exchange")

    async def fetch_order(self, symbol: str, cid: str) -> OrderState | None:
        return None


def fresh_live_buy(journal: Journal, venue: OutageVenue, cycle_id: str) -> tuple[PlanBody, Any]:
    """A journal with its genesis and a live buy on the bar the venue's clock just closed, with the live policy
    (a plan is stale two bars and a minute after its bar)."""
    from services.executor.runner import LivePolicy, ensure_genesis

    day = 86_400_000
    ensure_genesis(journal, 10_000.0)
    fields = {"cycle_id": cycle_id, "as_of_ms": venue.now - day, "data_digest": "d", "target_id": "t",
              "params_version": 0, "params_digest": "p", "basis_snapshot_id": "b", "gate": "pass", "halted": False,
              "reasons": [], "prices": {"BTC/USDT": 40_000.0},
              "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.05, 40_000.0, "enter")]}
    return PlanBody(plan_id=plan_id_for(fields), **fields), \
        LivePolicy(max_price_deviation=0.02, max_spread=0.01, plan_max_age_ms=2 * day + 60_000, bar_ms=day)  # type: ignore[arg-type]


def test_a_plan_an_outage_stopped_before_its_first_order_is_judged_fresh_again(journal: Journal) -> None:
    """run_plan journals a plan as executing before its first exchange read: an outage there left it executing
    with nothing sent, and its redelivery days later skipped the stale-plan check (it was not new) and traded."""
    from services.executor.runner import run_plan

    day = 86_400_000
    venue = OutageVenue()
    p, live = fresh_live_buy(journal, venue, "1d-x")
    limits = ExecutionLimits(max_order_usdt=1e9, max_attempts=1, backoff_s=0.0, settle_s=0.0)
    with pytest.raises(TransientBrokerError):
        run(run_plan(p, venue, journal, RULES, limits, LOG, {}, None, live))  # type: ignore[arg-type]
    assert journal.plan_status(p.plan_id) == "executing" and venue.placed == 0
    venue.down, venue.now = False, venue.now + 5 * day  # the outage lasts five days
    done = run(run_plan(p, venue, journal, RULES, limits, LOG, {}, None, live))  # type: ignore[arg-type]
    assert done.status == "rejected" and done.refusal == "stale_plan" and venue.placed == 0
    assert journal.plan_status(p.plan_id) == "rejected"
    assert journal.intent_state(client_order_id(p.plan_id, 0))[0] == "skipped"
    assert journal.open_intents() == []


def test_a_plan_dated_ahead_of_the_exchange_is_refused_without_closing_its_cycle(journal: Journal) -> None:
    """A compromised risk signs a plan under a bar of the year 9999, named by its own bar.  Refused as from the
    future, it still closed that cycle with a snapshot: the journal's newest bar from then on, and every genuine
    abort after it was ignored as older (found by a review).  Refused, nothing sent, no snapshot under its id."""
    from services.executor.runner import run_plan
    from shared.cycles import cycle_id_for

    venue = OutageVenue()
    venue.down = False
    ahead = 253_402_128_000_000  # 9999-12-30
    p, live = fresh_live_buy(journal, venue, cycle_id_for("1d", ahead))
    p = PlanBody(**{**{f: getattr(p, f) for f in p.__struct_fields__}, "as_of_ms": ahead})
    p = msgspec.structs.replace(p, plan_id=plan_id_for({f: getattr(p, f) for f in p.__struct_fields__
                                                        if f != "plan_id"}))
    limits = ExecutionLimits(max_order_usdt=1e9, max_attempts=1, backoff_s=0.0, settle_s=0.0)
    done = run(run_plan(p, venue, journal, RULES, limits, LOG, {}, None, live))  # type: ignore[arg-type]
    assert done.status == "rejected" and done.refusal == "future_plan" and venue.placed == 0
    assert journal.newest_bar_cycle("1d") is None
    assert journal.db.execute("SELECT count(*) FROM snapshots WHERE cycle_id=?", (p.cycle_id,)).fetchone()[0] == 0


class RefusedKeyVenue(OutageVenue):
    """Prices and balances answer; the key may not trade (Binance -2015 "permissions") while ``down``."""

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]:
        return {s: 40_000.0 for s in symbols}

    async def place_market_order(self, *args: object, **kwargs: object) -> OrderState:
        if self.down:
            raise CredentialsRejected("exchange rejected the credentials: -2015")
        return await super().place_market_order(*args, **kwargs)


def test_an_order_the_key_may_not_place_leaves_the_plan_fresh_for_the_stale_check(journal: Journal) -> None:
    """A key that can read but not trade: the order is refused before the matching engine.  The leg goes back to
    unsent, so when the key works again days later the plan is judged on its data's age, not traded."""
    from services.executor.runner import run_plan

    day = 86_400_000
    venue = RefusedKeyVenue()
    p, live = fresh_live_buy(journal, venue, "1d-y")
    limits = ExecutionLimits(max_order_usdt=1e9, max_attempts=3, backoff_s=0.0, settle_s=0.0)
    with pytest.raises(CredentialsRejected):
        run(run_plan(p, venue, journal, RULES, limits, LOG, {}, None, live))  # type: ignore[arg-type]
    assert journal.intent_state(client_order_id(p.plan_id, 0))[0] == "unsent"
    venue.down, venue.now = False, venue.now + 5 * day
    done = run(run_plan(p, venue, journal, RULES, limits, LOG, {}, None, live))  # type: ignore[arg-type]
    assert done.status == "rejected" and done.refusal == "stale_plan" and venue.placed == 0


def test_ignored_aborts_are_journaled_within_an_allowance_per_stage() -> None:
    from shared.allowance import Allowance

    gate = Allowance(burst=3, every_s=60.0)
    assert [gate.note("signal", now=0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert gate.note("risk", now=0.0) == 0  # each stage its own allowance
    assert gate.note("signal", now=59.0) is None
    assert gate.note("signal", now=61.0) == 3  # one more a minute later, saying how many went unjournaled
    assert gate.note("signal", now=62.0) is None


def test_a_refused_request_is_said_once_per_bad_write_not_at_every_read() -> None:
    from shared.allowance import SaidOnce

    said = SaidOnce()
    reads = ["revision 3: bad signature", "revision 3: bad signature", "", "revision 5: bad", "revision 5: bad"]
    assert [said.first("problem", r) for r in reads] == [True, False, True, True, False]
    assert said.first("other", "revision 3: bad signature")  # each key its own memory


@pytest.mark.parametrize(("side", "quote", "refused"), [
    ("buy", Quote(100.0, 99.9, 100.1), ""),  # a 0.2% book, the plan at the last price
    ("buy", Quote(100.0, 98.0, 102.0), "spread of 4.00%"),  # a wide book: the ask is 2% above the plan
    ("buy", Quote(100.0, 0.0, 100.1), "no two-sided book"),  # no bid: nothing to measure the book by
    ("buy", Quote(100.0, 100.2, 100.1), "no two-sided book"),  # crossed: not a book to trade against
    ("buy", Quote(0.0, 0.0, 0.0), "gives no price"),
    # Within the spread limit, the deviation is measured at the price the order meets: the ask for a buy
    # (2.5% above the plan: refused) and the bid for a sell (0.5% below: allowed).
    ("buy", Quote(102.0, 102.0, 102.5), "from the exchange's ask 102.5"),
    ("sell", Quote(100.0, 99.5, 100.3), ""),
])
def test_the_price_guard_judges_the_book_a_market_order_meets(side: str, quote: Quote, refused: str) -> None:
    from services.executor.live_guard import price_refusal

    leg = PlanLeg(0, "BTC/USDT", side, 1.0, 100.0, "test")
    why = price_refusal(leg, quote, max_deviation=0.02, max_spread=0.01)
    assert (refused in why and why) if refused else why == "", why
