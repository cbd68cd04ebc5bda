"""The fault matrix: every exchange fault injected through execute_plan + CcxtBroker + the simulator over HTTP.

Each test asserts the money outcome on the simulator's own books (orders booked per clientOrderId, balances)
and in the journal (intent states with reasons, fills), not just that no exception escaped.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from aura.exchange_sim import Fault
from services.executor.brokers.base import TransientBrokerError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.client_order_id import client_order_id
from services.executor.exchange_calls import ExecutionLimits
from services.executor.execution import ExecutionResult, execute_plan
from services.executor.runner import PlanRun, run_plan
from shared.contracts import PlanBody
from shared.health import HealthState
from tests.executor_live.conftest import LIMITS, Rig

pytestmark = pytest.mark.integration
ORDER = ("POST", "/api/v3/order")
ACCOUNT = ("GET", "/api/v3/account")


def execute(rig: Rig, plan: PlanBody, limits: ExecutionLimits = LIMITS, **broker: object) -> ExecutionResult:
    async def scenario(b: CcxtBroker) -> ExecutionResult:
        return await execute_plan(plan, b, rig.journal, await b.load_markets(), limits, rig.log)

    return rig.run(scenario, **broker)


def run_whole_plan(rig: Rig, plan: PlanBody, limits: ExecutionLimits = LIMITS) -> PlanRun:
    async def scenario(b: CcxtBroker) -> PlanRun:
        return await run_plan(plan, b, rig.journal, await b.load_markets(), limits, rig.log, {})

    return rig.run(scenario)


def intent(rig: Rig, plan: PlanBody, index: int) -> tuple[str, str]:
    status, reason, _ = rig.journal.intent_state(client_order_id(plan.plan_id, index))
    return status, reason


def journal_fills(rig: Rig, plan: PlanBody, index: int) -> list[tuple[str, float, float, float, float, float]]:
    return rig.journal.fills_for(client_order_id(plan.plan_id, index))


def sim_trade_ids(rig: Rig, plan: PlanBody, index: int, symbol: str) -> list[str]:
    order = rig.server.sim.order_by_client_id(symbol, client_order_id(plan.plan_id, index))
    return [] if order is None else [str(t.trade_id) for t in order.trades]


# --- lost answers: the order is looked up by clientOrderId and placed exactly once ----------------------------


def test_accept_then_time_out_finds_the_order_and_places_it_once(rig: Rig) -> None:
    rig.server.sim.faults.add(Fault("timeout", *ORDER, delay_s=1.0))  # booked, answer held past the timeout
    plan = rig.plan(("BTC/USDT", "buy", 0.01))
    result = execute(rig, plan, timeout_ms=300)
    assert result.status == "executed", result.reasons
    assert rig.posts() == 1, "the order was sent again although the exchange had booked it"
    assert rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1}
    assert rig.server.sim.free("BTC") == Decimal("0.00999")  # 0.01 bought once, its fee taken in BTC
    assert intent(rig, plan, 0)[0] == "filled"
    assert [f[0] for f in journal_fills(rig, plan, 0)] == sim_trade_ids(rig, plan, 0, "BTCUSDT")
    assert rig.records.tagged("AMBIGUOUS"), "the lost answer was not treated as ambiguous"


@pytest.mark.parametrize(("fault", "posts"), [
    (Fault("drop", *ORDER), 1),  # booked, connection dropped before the answer: found, never resent
    (Fault("drop", *ORDER, process=False), 2),  # lost before booking: confirmed absent after settling, resent
    (Fault("http_error", *ORDER, status=500, process=True), 1),  # booked then 5xx ("execution status unknown"): found
    (Fault("http_error", *ORDER, status=503, process=False), 2),  # 5xx before booking: resent once
], ids=["lost-response", "lost-request", "5xx-after-booking", "5xx-before-booking"])
def test_lost_response_and_5xx_never_double_place(rig: Rig, fault: Fault, posts: int) -> None:
    rig.server.sim.faults.add(fault)
    plan = rig.plan(("ETH/USDT", "buy", 0.5), ("BTC/USDT", "buy", 0.01))
    started = time.monotonic()
    result = execute(rig, plan)
    assert result.status == "executed", result.reasons
    assert rig.posts() == posts + 1  # + the untouched second leg
    assert rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1, client_order_id(plan.plan_id, 1): 1}
    # Each bought once, less its 0.1% fee taken in the coin bought.
    assert rig.server.sim.free("ETH") == Decimal("0.4995") and rig.server.sim.free("BTC") == Decimal("0.00999")
    assert rig.journal.count("fills") == 2
    if posts == 2:  # a resend only after a request still in flight could no longer land (rule 6)
        assert time.monotonic() - started >= LIMITS.settle_s


def test_rate_limit_retry_after_is_honoured_without_a_duplicate(rig: Rig) -> None:
    rig.server.sim.faults.add(Fault("rate_limit", *ORDER, retry_after_s=1.0))
    plan = rig.plan(("BTC/USDT", "buy", 0.01))
    started = time.monotonic()
    result = execute(rig, plan)
    waited = time.monotonic() - started
    assert result.status == "executed", result.reasons
    assert waited >= 1.0, f"Retry-After of 1 s not honoured (retried after {waited:.3f} s)"
    assert rig.posts() == 2 and rig.sim_orders_by_cid() == {client_order_id(plan.plan_id, 0): 1}
    assert [f.get("retry_after_s") for f in rig.records.fields("RATE_LIMIT")] == [1.0]
    assert rig.server.sim.free("BTC") == Decimal("0.00999")  # 0.01 bought once, its fee taken in BTC


# --- partial fills -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rig", [{"market_fill_chunks": 4, "market_expire_after_chunks": 2}], indirect=True)
def test_partial_fill_plan_is_partial_with_reasons_and_fills_journaled(rig: Rig) -> None:
    plan = rig.plan(("BTC/USDT", "buy", 0.04), ("ETH/USDT", "buy", 0.4))
    run = run_whole_plan(rig, plan)
    assert run.status == "partial"
    assert rig.journal.plan_status(plan.plan_id) == "partial"
    row = rig.journal.db.execute("SELECT reasons FROM plans WHERE plan_id=?", (plan.plan_id,)).fetchone()
    assert "leg 0 BTC/USDT: partial 0.02/0.04" in row[0] and "leg 1 ETH/USDT: partial" in row[0]
    for index, symbol in ((0, "BTCUSDT"), (1, "ETHUSDT")):
        assert intent(rig, plan, index)[0] == "partial"
        ids = sim_trade_ids(rig, plan, index, symbol)
        assert len(ids) == 2 and sorted(f[0] for f in journal_fills(rig, plan, index)) == sorted(ids)
    # What the journal says we hold is what we hold: half filled, less the fees taken in the coins bought.
    assert rig.server.sim.free("BTC") == Decimal("0.01998") and rig.server.sim.free("ETH") == Decimal("0.1998")
    snap = rig.journal.latest_snapshot()
    assert snap is not None and snap.holdings == {"BTC/USDT": 0.01998, "ETH/USDT": 0.1998}


@pytest.mark.parametrize("rig", [{"market_fill_chunks": 3}], indirect=True)
def test_working_order_is_polled_until_filled(rig: Rig) -> None:
    plan = rig.plan(("ETH/USDT", "buy", 0.3))
    result = execute(rig, plan)
    assert result.status == "executed" and intent(rig, plan, 0)[0] == "filled"
    assert len(journal_fills(rig, plan, 0)) == 3 and rig.server.sim.free("ETH") == Decimal("0.2997")  # less fees


@pytest.mark.parametrize("rig", [{"market_fill_chunks": 3, "fill_on_query": False}], indirect=True)
def test_stuck_order_is_cancelled_and_its_fills_stay_with_it(rig: Rig) -> None:
    plan = rig.plan(("ETH/USDT", "buy", 0.3))
    limits = ExecutionLimits(max_order_usdt=1e6, backoff_s=0.01, fill_poll_s=0.02, fill_timeout_s=0.2,
                             settle_s=0.4)
    result = execute(rig, plan, limits)
    cid = client_order_id(plan.plan_id, 0)
    assert result.status == "partial" and intent(rig, plan, 0)[0] == "partial"
    # Binance answers a cancel with the *cancel request's* clientOrderId: the fills must stay with our order.
    assert [r[0] for r in rig.journal.db.execute("SELECT client_order_id FROM orders")] == [cid]
    assert rig.journal.db.execute("SELECT status FROM orders").fetchone()[0] == "canceled"
    assert len(journal_fills(rig, plan, 0)) == 1 and rig.server.sim.free("ETH") == Decimal("0.0999")  # less fee


# --- final rejections: the leg is rejected with the exchange's code, the others go on ---------------------------


def test_insufficient_balance_rejects_the_leg_with_its_code_and_the_rest_continues(rig: Rig) -> None:
    plan = rig.plan(("BTC/USDT", "buy", 1.0), ("ETH/USDT", "buy", 0.5))  # ~42k USDT with 10k, then a small buy
    run = run_whole_plan(rig, plan)
    assert run.status == "partial"
    status, reason = intent(rig, plan, 0)
    assert status == "rejected" and "-2010" in reason
    assert any("leg 0 BTC/USDT rejected (code -2010)" in r for r in run.reasons)
    assert intent(rig, plan, 1)[0] == "filled" and rig.server.sim.free("ETH") == Decimal("0.4995")  # less fee
    assert rig.server.sim.order_by_client_id("BTCUSDT", client_order_id(plan.plan_id, 0)) is None


@pytest.mark.parametrize("rig", [{"rules": {"BTCUSDT": {"step_size": 0.00001, "min_notional": 1000}}}],
                         indirect=True)
def test_filter_failure_rejects_the_leg_with_its_code(rig: Rig) -> None:
    plan = rig.plan(("BTC/USDT", "buy", 0.002), ("ETH/USDT", "buy", 0.5))

    async def scenario(b: CcxtBroker) -> ExecutionResult:
        rules = await b.load_markets()
        # Our copy of the rules is out of date (min notional 5): the exchange is the judge, with -1013.
        rules["BTC/USDT"] = type(rules["BTC/USDT"])("BTC/USDT", 0.00001, 0.01, 0.00001, 5.0)
        return await execute_plan(plan, b, rig.journal, rules, LIMITS, rig.log)

    result = rig.run(scenario)
    assert result.status == "partial"
    status, reason = intent(rig, plan, 0)
    assert status == "rejected" and "-1013" in reason and "NOTIONAL" in reason
    assert intent(rig, plan, 1)[0] == "filled" and rig.posts() == 2


# --- balance reads before a sell -----------------------------------------------------------------------------------


def test_empty_balance_read_is_retried_not_taken_as_zero(rig: Rig) -> None:
    execute(rig, rig.plan(("BTC/USDT", "buy", 0.02)))
    rig.server.sim.faults.add(Fault("empty_balance", *ACCOUNT))
    reads = rig.account_reads()
    sell = rig.plan(("BTC/USDT", "sell", 0.02))
    result = execute(rig, sell)
    assert result.status == "executed", result.reasons
    assert intent(rig, sell, 0)[0] == "filled" and rig.server.sim.free("BTC") == Decimal("0")
    assert rig.account_reads() - reads == 2  # the empty list, then the real balances
    assert any("empty balance" in str(f.get("error")) for f in rig.records.fields("SELL_CLAMP"))


def test_stale_balance_read_is_retried_not_used_for_the_clamp(rig: Rig) -> None:
    async def scenario(b: CcxtBroker) -> ExecutionResult:
        await b.fetch_free_balances()  # the simulator now remembers a snapshot without BTC
        await execute_plan(rig.plan(("BTC/USDT", "buy", 0.02)), b, rig.journal, await b.load_markets(), LIMITS,
                           rig.log)
        rig.server.sim.faults.add(Fault("stale_balance", *ACCOUNT))  # serves that old snapshot once
        return await execute_plan(sell, b, rig.journal, await b.load_markets(), LIMITS, rig.log)

    sell = rig.plan(("BTC/USDT", "sell", 0.02))
    result = rig.run(scenario)
    # Had the stale read been used, the clamp would have cut the sell to 0 and skipped it.
    assert result.status == "executed" and intent(rig, sell, 0)[0] == "filled", result.reasons
    assert rig.server.sim.free("BTC") == Decimal("0")
    assert any("stale" in str(f.get("error")) for f in rig.records.fields("SELL_CLAMP"))


def test_unreadable_balance_never_sends_the_sell_unclamped(rig: Rig) -> None:
    """Every balance read fails: the sell must not go out at the plan's size (-2010, the exit lost for good);
    the plan raises a transient error, the intent stays unsent, and the retry clamps and sells."""
    rig.server.sim.set_balance("BTC", "0.05")  # less than the plan believes
    sell = rig.plan(("BTC/USDT", "sell", 0.1))
    rig.server.sim.faults.add(Fault("empty_balance", *ACCOUNT, count=LIMITS.max_attempts))
    with pytest.raises(TransientBrokerError, match="sell not placed unclamped"):
        execute(rig, sell)
    assert rig.posts() == 0 and intent(rig, sell, 0)[0] == "pending"
    result = execute(rig, sell)  # the redelivery, once balances read again
    assert result.status == "executed" and intent(rig, sell, 0)[0] == "filled", result.reasons
    assert rig.posts() == 1 and rig.server.sim.free("BTC") == Decimal("0")
    assert any("sell clamped to free balance" in r for r in result.reasons)


def test_balance_reads_honour_retry_after(rig: Rig) -> None:
    execute(rig, rig.plan(("BTC/USDT", "buy", 0.02)))
    rig.server.sim.faults.add(Fault("rate_limit", *ACCOUNT, retry_after_s=2.0))  # whole seconds, as HTTP sends
    result = execute(rig, rig.plan(("BTC/USDT", "sell", 0.01)))
    assert result.status == "executed", result.reasons
    waits = [f.get("retry_in_s") for f in rig.records.fields("SELL_CLAMP")]
    assert waits == [2.0], f"the balance retry did not wait the exchange's Retry-After: {waits}"


# --- the sell clamp, the minimum notional and the per-order cap ------------------------------------------------------


def test_sell_larger_than_the_free_balance_is_clamped_to_it_after_rounding(rig: Rig) -> None:
    rig.server.sim.set_balance("BTC", "0.0500049")  # less than the plan thinks, and not a whole lot step
    plan = rig.plan(("BTC/USDT", "sell", 0.05003))
    result = execute(rig, plan)
    # Without the clamp the exchange refuses the sell (-2010) and the position is not reduced at all.
    assert result.status == "executed", result.reasons
    assert intent(rig, plan, 0)[0] == "filled"
    order = rig.server.sim.order_by_client_id("BTCUSDT", client_order_id(plan.plan_id, 0))
    assert order is not None and order.orig_qty == Decimal("0.05") and order.status == "FILLED"
    assert rig.server.sim.free("BTC") == Decimal("0.0000049")
    assert any("sell clamped to free balance" in r for r in result.reasons)


def test_below_min_notional_is_skipped_with_a_logged_reason_never_sent(rig: Rig) -> None:
    rig.server.sim.set_balance("ETH", "0.001")  # ~2 USDT: a clamped sell of it is dust too
    plan = rig.plan(("BTC/USDT", "buy", 0.0001), ("ETH/USDT", "sell", 0.5), ("ETH/USDT", "buy", 0.01))
    result = execute(rig, plan)
    assert intent(rig, plan, 0) == ("skipped", intent(rig, plan, 0)[1])
    assert "below exchange minimum" in intent(rig, plan, 0)[1]
    assert intent(rig, plan, 1)[0] == "skipped" and "below exchange minimum" in intent(rig, plan, 1)[1]
    assert intent(rig, plan, 2)[0] == "filled"
    assert rig.posts() == 1, "a dust leg reached the exchange"
    assert [f.get("symbol") for f in rig.records.fields("SKIP")] == ["BTC/USDT", "ETH/USDT"]
    assert all("below exchange minimum" in str(f.get("reason")) for f in rig.records.fields("SKIP"))
    assert result.status == "executed"  # a skip is not a failure: nothing was refused


def test_max_order_usdt_caps_every_order(rig: Rig) -> None:
    limits = ExecutionLimits(max_order_usdt=500.0, backoff_s=0.01, fill_poll_s=0.01, settle_s=0.4)
    plan = rig.plan(("BTC/USDT", "buy", 0.1), ("ETH/USDT", "buy", 1.0))  # ~4.2k and ~2.3k USDT wanted
    result = execute(rig, plan, limits)
    assert result.status == "partial"  # both legs cut short of the target: never reported as executed
    for index, symbol in ((0, "BTCUSDT"), (1, "ETHUSDT")):
        order = rig.server.sim.order_by_client_id(symbol, client_order_id(plan.plan_id, index))
        assert order is not None
        notional = order.orig_qty * rig.server.sim.price(symbol)
        assert Decimal(480) < notional <= Decimal(500), f"{symbol} order of {notional} USDT"
    assert sum("capped at max_order_usdt=500.0" in r for r in result.reasons) == 2


def test_the_executor_takes_its_cap_from_aura_max_order_usdt(tmp_path: Path) -> None:
    from services.executor.journal import Journal
    from services.executor.service import Executor
    from shared.config import load_settings
    from shared.credentials import ensure_credentials

    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_MAX_ORDER_USDT": "250", "AURA_DRY_RUN": "false",
                              "AURA_INGEST_SOURCE": "sync"})
    ensure_credentials(settings.keys)
    ctx = SimpleNamespace(settings=settings, logger=logging.getLogger("test"), health=HealthState("executor"))
    # A journal (it starts the marks from its newest plans: services/executor/runner.recent_marks); no broker.
    executor = Executor(ctx, Journal(tmp_path / "journal.sqlite"), None, {})  # type: ignore[arg-type]
    assert executor.limits.max_order_usdt == 250.0
    assert executor.limits.settle_s >= 10.0  # live: a lookup settles past ccxt's 10 s recvWindow
    assert executor.sync is not None  # live: holdings are verified against the exchange before each plan
