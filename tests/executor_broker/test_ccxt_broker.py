"""CcxtBroker over HTTP against the exchange simulator: states, fills, and every error mapping."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from decimal import Decimal
from pathlib import Path

import pytest

from aura.exchange_sim import Fault, SimServer
from aura.strategy.types import MarketRule
from services.executor.brokers.base import (
    AmbiguousOrderError,
    CredentialsRejected,
    DuplicateOrderError,
    OrderRejectedError,
    OrderState,
    RateLimitedError,
    TransientBrokerError,
)
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.ccxt_fills import fill_of
from services.executor.brokers.client_order_id import client_order_id
from shared.logging import JsonFormatter
from tests.executor_broker.conftest import run_with_broker

pytestmark = pytest.mark.integration

ORDER = ("POST", "/api/v3/order")
CID = client_order_id("plan-test", 0)


def test_load_markets_free_balances_and_prices(sim_server: SimServer, shared_data_dir: Path) -> None:
    async def scenario(b: CcxtBroker) -> None:
        rules = await b.load_markets()
        assert rules["BTC/USDT"] == MarketRule("BTC/USDT", step_size=1e-5, tick_size=0.01, min_qty=1e-5,
                                               min_notional=5.0, max_qty=9e6)  # the simulator's LOT_SIZE maxQty
        assert rules["ETH/USDT"].step_size == 1e-4
        assert (await b.fetch_free_balances())["USDT"] == 10_000
        prices = await b.fetch_prices(["BTC/USDT", "ETHUSDT", "DOGE/USDT"])  # DOGE is not listed: absent
        assert prices == {"BTC/USDT": float(sim_server.sim.price("BTCUSDT")),
                          "ETHUSDT": float(sim_server.sim.price("ETHUSDT"))}

    run_with_broker(sim_server, scenario)


def test_market_order_state_fills_and_fetch_agree(sim_server: SimServer) -> None:
    price = float(sim_server.sim.price("BTCUSDT"))

    async def scenario(b: CcxtBroker) -> tuple[OrderState, OrderState | None]:
        placed = await b.place_market_order("BTC/USDT", "buy", 0.0123456789, CID, ref_price=price)
        return placed, await b.fetch_order("BTC/USDT", CID)

    placed, fetched = run_with_broker(sim_server, scenario)
    assert placed.status == "filled" and placed.is_final and placed.client_order_id == CID
    assert placed.qty == 0.01234 and placed.filled_qty == 0.01234  # truncated to the lot step
    assert placed.avg_price == price and len(placed.fills) == 1
    fill = placed.fills[0]
    # Binance without BNB takes a buy's fee in the coins bought: 0.00001234 BTC, valued at the fill price.
    assert fill.fee_base == 0.00001234 and fill.fee_quote == 0.0
    assert fill.fee == pytest.approx(0.01234 * price * 0.001, abs=1e-8)  # commission has 8 decimals
    assert fill.side == "buy" and fill.qty == 0.01234 and fill.price == price
    assert fetched is not None and fetched.fills == placed.fills  # myTrades and the FULL answer agree
    assert fetched.exchange_order_id == placed.exchange_order_id
    assert sim_server.sim.free("BTC") == Decimal("0.01232766")  # 0.01234 less the fee


def test_accept_then_timeout_is_ambiguous_and_lookup_proves_no_double_fill(sim_server: SimServer) -> None:
    sim_server.sim.faults.add(Fault("timeout", *ORDER, delay_s=1.5))

    async def scenario(b: CcxtBroker) -> OrderState | None:
        called = time.monotonic()
        with pytest.raises(AmbiguousOrderError) as lost:
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        # When it could have left, for the settle window (execution.py rule 6): after the call, before the answer
        assert lost.value.sent_at is not None and called <= lost.value.sent_at <= time.monotonic() - 0.3
        found = await b.fetch_order("BTC/USDT", CID)
        with pytest.raises(DuplicateOrderError):  # a blind resend is refused by the exchange
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        return found

    found = run_with_broker(sim_server, scenario, timeout_ms=400)
    assert found is not None and found.status == "filled" and found.filled_qty == 0.01 and len(found.fills) == 1
    # One buy of 0.01 BTC, its 0.1% fee taken in BTC.
    assert len(sim_server.sim.orders()) == 1 and sim_server.sim.free("BTC") == Decimal("0.00999")


def test_a_lost_request_held_by_the_rate_limiter_is_timed_from_its_signing(sim_server: SimServer) -> None:
    """ccxt signs a request after its rate limiter's wait: the settle window (execution.py rule 6) runs from
    there, not from the call, or it closes early by the wait (found by an audit)."""
    sim_server.sim.faults.add(Fault("timeout", *ORDER, delay_s=1.5))
    held_s = 0.5

    async def scenario(b: CcxtBroker) -> tuple[float, float]:
        async def slow_throttle(cost: float | None = None) -> None:  # the rate limiter holding the request
            await asyncio.sleep(held_s)

        await b.fetch_free_balances()  # markets loaded: the call below sends the order request alone
        b.exchange.throttle = slow_throttle
        b.exchange.enableRateLimit = True
        called = time.monotonic()
        with pytest.raises(AmbiguousOrderError) as lost:
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        assert lost.value.sent_at is not None
        return called, lost.value.sent_at

    called, sent_at = run_with_broker(sim_server, scenario, timeout_ms=400)
    assert sent_at >= called + held_s - 0.01, f"timed {sent_at - called:.3f} s after the call, held {held_s} s"


@pytest.mark.parametrize("sim_server", [{}, {"fee_asset": "quote"}], indirect=True, ids=["received", "quote"])
def test_fills_carry_the_fee_in_the_asset_the_exchange_took_it_in(sim_server: SimServer) -> None:
    in_base = sim_server.sim.config.fee_asset == "received"
    price = float(sim_server.sim.price("ETHUSDT"))

    async def scenario(b: CcxtBroker) -> tuple[OrderState, OrderState]:
        buy = await b.place_market_order("ETH/USDT", "buy", 0.5, CID, ref_price=price)
        held = (await b.fetch_free_balances())["ETH"]
        sell = await b.place_market_order("ETH/USDT", "sell", held, client_order_id("plan-test", 1), ref_price=price)
        return buy, sell

    buy, sell = run_with_broker(sim_server, scenario)
    (bought,), (sold,) = buy.fills, sell.fills
    buy_trade, sell_trade = sim_server.sim.orders()[0].trades[0], sim_server.sim.orders()[1].trades[0]
    if in_base:  # Binance without BNB: out of the ETH received
        assert (bought.fee_base, bought.fee_quote) == (0.0005, 0.0) and buy_trade.commission_asset == "ETH"
        assert bought.fee == pytest.approx(0.0005 * price)  # still reported in USDT
    else:
        assert (bought.fee_base, bought.fee_quote) == (0.0, float(buy_trade.commission))
        assert bought.fee == bought.fee_quote and buy_trade.commission_asset == "USDT"
    assert sold.qty == (0.4995 if in_base else 0.5)  # the whole holding the account really had
    assert (sold.fee_base, sold.fee_quote) == (0.0, float(sell_trade.commission))  # a sell receives USDT
    assert sell_trade.commission_asset == "USDT" and sold.fee == sold.fee_quote
    assert sim_server.sim.free("ETH") == 0


def test_a_fee_in_a_third_asset_moves_neither_cash_nor_holding_and_is_logged(sim_server: SimServer) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("aura.test.ccxt_broker.bnb_fee")
    logger.addHandler(handler)
    trade = {"id": "7", "side": "buy", "price": 40_000.0, "amount": 0.01, "timestamp": 1,
             "fee": {"cost": 0.0002, "currency": "BNB"}}

    async def scenario(b: CcxtBroker) -> None:
        fill = fill_of("BTC/USDT", {"side": "buy"}, trade, 0, b.log)
        # BNB balances are not tracked by the journal: nothing out of BTC or USDT, and nothing made up.
        assert (fill.fee_base, fill.fee_quote, fill.fee) == (0.0, 0.0, 0.0) and fill.qty == 0.01

    try:
        run_with_broker(sim_server, scenario, logger=logger)
    finally:
        logger.removeHandler(handler)
    assert any("third currency" in r.getMessage() for r in records)


@pytest.mark.parametrize(("fault", "booked"), [
    (Fault("drop", *ORDER), True),  # response lost after booking
    (Fault("drop", *ORDER, process=False), False),  # request lost before booking
    (Fault("http_error", *ORDER, status=503, process=False), False),
    (Fault("http_error", *ORDER, status=500, process=True), True),  # Binance: "execution status unknown"
    (Fault("http_error", *ORDER, status=502, body="<html>Bad Gateway</html>"), False),
])
def test_lost_or_failed_order_answers_are_ambiguous(sim_server: SimServer, fault: Fault, booked: bool) -> None:
    sim_server.sim.faults.add(fault)

    async def scenario(b: CcxtBroker) -> OrderState | None:
        with pytest.raises(AmbiguousOrderError):
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        found = await b.fetch_order("BTC/USDT", CID)
        assert (found is not None) is booked
        if found is None:  # the exchange confirms it never saw it: now (and only now) resending is safe
            found = await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        return found

    final = run_with_broker(sim_server, scenario)
    assert final is not None and final.status == "filled"
    # One buy of 0.01 BTC, its 0.1% fee taken in BTC.
    assert len(sim_server.sim.orders()) == 1 and sim_server.sim.free("BTC") == Decimal("0.00999")


def test_read_failures_are_transient_not_ambiguous(sim_server: SimServer) -> None:
    sim_server.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", status=503))
    # count=2: aiohttp itself retries an idempotent GET once when a kept-alive connection drops (never a POST).
    sim_server.sim.faults.add(Fault("drop", "GET", "/api/v3/order", process=False, count=2))

    async def scenario(b: CcxtBroker) -> None:
        with pytest.raises(TransientBrokerError) as err:
            await b.fetch_free_balances()
        assert not isinstance(err.value, AmbiguousOrderError)
        with pytest.raises(TransientBrokerError):
            await b.fetch_order("BTC/USDT", CID)
        assert await b.fetch_order("BTC/USDT", CID) is None

    run_with_broker(sim_server, scenario)


@pytest.mark.parametrize("target", [ORDER, ("GET", "/api/v3/account")])
def test_rate_limit_carries_retry_after(sim_server: SimServer, target: tuple[str, str]) -> None:
    sim_server.sim.faults.add(Fault("rate_limit", *target, retry_after_s=7))

    async def scenario(b: CcxtBroker) -> None:
        with pytest.raises(RateLimitedError) as err:
            if target == ORDER:
                await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
            else:
                await b.fetch_free_balances()
        assert err.value.retry_after_s == 7.0 and err.value.transient

    run_with_broker(sim_server, scenario)
    assert sim_server.sim.orders() == []


@pytest.mark.parametrize(("symbol", "side", "qty", "code"), [
    ("BTC/USDT", "buy", 1.0, -2010),  # ~42k USDT with 10k: insufficient balance
    ("ETH/USDT", "sell", 0.5, -2010),  # nothing to sell
    ("BTC/USDT", "buy", 0.00002, -1013),  # ~0.85 USDT: NOTIONAL filter
    ("DOGE/USDT", "buy", 10, -1121),  # not listed here
])
def test_final_rejections_carry_the_exchange_code(sim_server: SimServer, symbol: str, side: str, qty: float,
                                                  code: int) -> None:
    async def scenario(b: CcxtBroker) -> None:
        with pytest.raises(OrderRejectedError) as err:
            await b.place_market_order(symbol, side, qty, CID, ref_price=0)
        assert err.value.code == code and not err.value.transient

    run_with_broker(sim_server, scenario)
    assert sim_server.sim.orders() == []


def test_quantity_below_one_lot_is_rejected_without_a_request(sim_server: SimServer) -> None:
    async def scenario(b: CcxtBroker) -> None:
        await b.load_markets()
        with pytest.raises(OrderRejectedError):
            await b.place_market_order("BTC/USDT", "buy", 0.000004, CID, ref_price=0)

    run_with_broker(sim_server, scenario)
    assert "POST /api/v3/order" not in sim_server.sim.faults.counts()


def test_bad_credentials_are_refused_as_the_environments_fault(sim_server: SimServer) -> None:
    """A key the exchange refuses is not a verdict on any plan: plans wait for it (services/executor/outage.py)."""
    async def scenario(b: CcxtBroker) -> None:
        with pytest.raises(CredentialsRejected) as err:
            await b.fetch_free_balances()
        assert err.value.transient and "rejected the credentials" in str(err.value)

    run_with_broker(sim_server, scenario, secret="not-the-secret")


def test_clock_skew_is_transient_and_cured_by_time_adjustment(sim_server: SimServer) -> None:
    sim_server.sim.configure(clock_skew_ms=30_000)

    async def failing(b: CcxtBroker) -> None:
        with pytest.raises(TransientBrokerError) as err:
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        assert not isinstance(err.value, AmbiguousOrderError)  # -1021 is a clear "not done"

    async def adjusted(b: CcxtBroker) -> OrderState:
        return await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)

    run_with_broker(sim_server, failing)
    assert sim_server.sim.orders() == []
    assert run_with_broker(sim_server, adjusted, adjust_for_time_difference=True).status == "filled"


def test_empty_and_stale_balances_are_transient(sim_server: SimServer) -> None:
    async def scenario(b: CcxtBroker) -> None:
        assert (await b.fetch_free_balances())["BTC"] == 0
        await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        sim_server.sim.faults.add(Fault("empty_balance", "GET", "/api/v3/account"))
        with pytest.raises(TransientBrokerError, match="empty balance"):
            await b.fetch_free_balances()
        sim_server.sim.faults.add(Fault("stale_balance", "GET", "/api/v3/account"))
        with pytest.raises(TransientBrokerError, match="stale"):
            await b.fetch_free_balances()
        assert (await b.fetch_free_balances())["BTC"] == 0.00999  # 0.01 less its fee, taken in BTC

    run_with_broker(sim_server, scenario)


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 3}], indirect=True)
def test_partial_fills_are_reflected_until_filled(sim_server: SimServer) -> None:
    async def scenario(b: CcxtBroker) -> list[OrderState]:
        states = [await b.place_market_order("ETH/USDT", "buy", 0.3, CID, ref_price=0)]
        for _ in range(2):
            got = await b.fetch_order("ETH/USDT", CID)
            assert got is not None
            states.append(got)
        return states

    first, second, third = run_with_broker(sim_server, scenario)
    assert [s.status for s in (first, second, third)] == ["partially_filled", "partially_filled", "filled"]
    assert [len(s.fills) for s in (first, second, third)] == [1, 2, 3]
    assert first.filled_qty == pytest.approx(0.1) and second.filled_qty == pytest.approx(0.2)
    assert sum(f.qty for f in third.fills) == pytest.approx(0.3) and third.filled_qty == pytest.approx(0.3)
    assert len({f.trade_id for f in third.fills}) == 3
    assert [f.fee_base for f in third.fills] == [0.0001] * 3  # each chunk's fee in the ETH it bought
    assert sim_server.sim.free("ETH") == Decimal("0.2997")


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 4, "market_expire_after_chunks": 2}], indirect=True)
def test_expired_remainder_is_final_with_partial_fill(sim_server: SimServer) -> None:
    async def scenario(b: CcxtBroker) -> OrderState | None:
        await b.place_market_order("BTC/USDT", "buy", 0.04, CID, ref_price=0)
        return await b.fetch_order("BTC/USDT", CID)

    state = run_with_broker(sim_server, scenario)
    assert state is not None and state.status == "expired" and state.is_final
    assert state.filled_qty == pytest.approx(0.02) and len(state.fills) == 2


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 3}], indirect=True)
def test_cancel_partially_filled_then_again_then_unknown(sim_server: SimServer) -> None:
    async def scenario(b: CcxtBroker) -> None:
        await b.place_market_order("BTC/USDT", "buy", 0.03, CID, ref_price=0)
        canceled = await b.cancel_order("BTC/USDT", CID)
        assert canceled is not None and canceled.status == "canceled" and canceled.filled_qty == pytest.approx(0.01)
        assert canceled.client_order_id == CID  # not the id Binance gives the cancel request itself
        assert len(canceled.fills) == 1
        again = await b.cancel_order("BTC/USDT", CID)  # already final: its state, not an error
        assert again is not None and again.status == "canceled"
        assert await b.cancel_order("BTC/USDT", "never-sent") is None
        assert await b.fetch_order("BTC/USDT", "never-sent") is None

    run_with_broker(sim_server, scenario)
    assert sim_server.sim.free("BTC") == Decimal("0.00999")  # the one chunk of 0.01 less its fee in BTC


def test_credentials_never_reach_the_logs(sim_server: SimServer) -> None:
    key, secret = "KEY-5f1c0a9e-never-log-me", "SECRET-b7e2d4-never-log-me"
    sim_server.sim.config.api_key, sim_server.sim.config.api_secret = key, secret
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("executor"))
    logger = logging.getLogger("aura.test.ccxt_broker")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    sim_server.sim.faults.add(Fault("http_error", *ORDER, status=500, process=True))

    async def scenario(b: CcxtBroker) -> None:
        logger.info("configured with %s / %s", key, secret)  # even an explicit slip is masked
        with pytest.raises(AmbiguousOrderError):
            await b.place_market_order("BTC/USDT", "buy", 0.01, CID, ref_price=0)
        await b.place_market_order("BTC/USDT", "buy", 0.01, client_order_id("plan-test", 1), ref_price=0)

    try:
        run_with_broker(sim_server, scenario, api_key=key, secret=secret, logger=logger)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "placing market order" in text and "market order failed" in text
    assert key not in text and secret not in text
