"""The simulator driven by the real ccxt.binance client (sync): markets, prices, balances, orders, fills."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest

from aura.exchange_sim import SimServer
from tests.exchange_sim.conftest import START, close_on

pytestmark = pytest.mark.integration

FEE = Decimal("0.001")


def d(x: float | str) -> Decimal:
    return Decimal(str(x))


def test_load_markets_gives_binance_filters(client: Any) -> None:
    btc = client.markets["BTC/USDT"]
    assert set(client.markets) == {"BTC/USDT", "ETH/USDT"}
    assert btc["id"] == "BTCUSDT" and btc["spot"] and btc["active"]
    assert btc["precision"]["amount"] == 0.00001 and btc["precision"]["price"] == 0.01
    assert btc["limits"]["cost"]["min"] == 5.0 and btc["limits"]["amount"]["min"] == 0.00001


def test_ticker_is_the_real_close_at_the_replay_clock(client: Any, candle_dir: Path) -> None:
    expected = close_on(candle_dir, "BTC_USDT", START)
    ticker = client.fetch_ticker("BTC/USDT")
    assert ticker["last"] == pytest.approx(expected, rel=1e-12)
    assert client.fetch_tickers()["ETH/USDT"]["last"] == pytest.approx(close_on(candle_dir, "ETH_USDT", START))


def test_ohlcv_stops_at_the_clock_and_advances(client: Any, sim_server: SimServer, candle_dir: Path) -> None:
    bars = client.fetch_ohlcv("BTC/USDT", "1d", limit=5)
    assert len(bars) == 5
    # The price bar is the newest closed one; after it only the bar forming now, showing no more than its open
    # and the current price (no lookahead), as Binance sends the forming candle too.
    assert bars[-2][0] == sim_server.sim.market.clock_ms and bars[-2][4] == close_on(candle_dir, "BTC_USDT", START)
    forming = bars[-1]
    assert forming[0] == bars[-2][0] + 86_400_000 <= sim_server.sim.now_ms() < forming[0] + 86_400_000
    assert forming[4] == float(sim_server.sim.price("BTCUSDT")) and forming[5] == 0
    sim_server.sim.advance(1)
    nxt = client.fetch_ohlcv("BTC/USDT", "1d", limit=5)
    assert nxt[-2][0] == bars[-2][0] + 86_400_000
    assert nxt[-2][4] == pytest.approx(close_on(candle_dir, "BTC_USDT", "2024-01-02"))


@pytest.mark.parametrize("sim_server", [{}, {"fee_asset": "quote"}], indirect=True, ids=["received", "quote"])
def test_market_buy_then_sell_moves_balances_by_price_and_fee(client: Any, sim_server: SimServer) -> None:
    # Default ("received"), as Binance without BNB: the buy's fee comes out of the BTC bought, the sell's out of
    # the USDT received.  "quote": every fee out of USDT (the simulator's older behaviour).
    # Rounding named as the simulator's books name it: ccxt changes this thread's decimal context to round half up.
    in_base = sim_server.sim.config.fee_asset == "received"
    price = sim_server.sim.price("BTCUSDT")
    assert client.fetch_balance()["free"]["USDT"] == 10_000
    buy = client.create_order("BTC/USDT", "market", "buy", 0.05, None, {"newClientOrderId": "buy-1"})
    assert buy["clientOrderId"] == "buy-1" and buy["status"] == "closed"
    assert d(buy["filled"]) == d("0.05") and d(buy["average"]) == price
    cost = price * d("0.05")
    buy_fee = ((d("0.05") if in_base else cost) * FEE).quantize(Decimal("1e-8"), ROUND_HALF_EVEN)
    assert d(buy["fee"]["cost"]) == buy_fee and buy["fee"]["currency"] == ("BTC" if in_base else "USDT")
    fill = buy["info"]["fills"][0]  # the FULL response's fills carry the commission as Binance reports it
    assert d(fill["commission"]) == buy_fee and fill["commissionAsset"] == ("BTC" if in_base else "USDT")
    bal = client.fetch_balance()
    assert d(bal["free"]["USDT"]) == Decimal(10_000) - cost - (0 if in_base else buy_fee)
    assert d(bal["free"]["BTC"]) == d("0.05") - (buy_fee if in_base else 0)

    held = d(bal["free"]["BTC"])  # all of it: 0.04995 BTC when the fee was taken from the coins
    sim_server.sim.set_price("BTCUSDT", price * 2)  # the position doubles
    sell = client.create_order("BTC/USDT", "market", "sell", float(held), None, {"newClientOrderId": "sell-1"})
    assert d(sell["average"]) == price * 2
    after = client.fetch_balance()
    proceeds = price * 2 * held
    sell_fee = (proceeds * FEE).quantize(Decimal("1e-8"), ROUND_HALF_EVEN)
    assert d(sell["fee"]["cost"]) == sell_fee and sell["fee"]["currency"] == "USDT"  # a sell receives USDT
    assert d(after["free"]["USDT"]) == d(bal["free"]["USDT"]) + proceeds - sell_fee
    assert d(after["free"]["BTC"]) == 0

    trades = client.fetch_my_trades("BTC/USDT")  # myTrades reports each commission in its own asset too
    assert [(t["side"], d(t["fee"]["cost"]), t["fee"]["currency"]) for t in trades] == [
        ("buy", buy_fee, "BTC" if in_base else "USDT"), ("sell", sell_fee, "USDT")]
    assert [t["info"]["commissionAsset"] for t in trades] == ["BTC" if in_base else "USDT", "USDT"]


def test_fetch_order_by_client_order_id_and_my_trades(client: Any) -> None:
    placed = client.create_order("ETH/USDT", "market", "buy", 0.5, None, {"newClientOrderId": "eth-buy"})
    found = client.fetch_order("", "ETH/USDT", {"origClientOrderId": "eth-buy"})
    assert found["id"] == placed["id"] and found["status"] == "closed" and found["filled"] == 0.5
    trades = client.fetch_my_trades("ETH/USDT")
    assert [t["order"] for t in trades] == [placed["id"]]
    assert trades[0]["id"] == placed["trades"][0]["id"]  # FULL fills and myTrades agree on trade ids


def test_duplicate_client_order_id_is_rejected_and_nothing_fills_twice(client: Any, sim_server: SimServer) -> None:
    client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "once"})
    # Binance answers -2010 "Duplicate order sent."; ccxt raises plain InvalidOrder (not DuplicateOrderId).
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": "once"})
    assert len(sim_server.sim.orders()) == 1
    assert sim_server.sim.free("BTC") == d("0.00999")  # one buy of 0.01, its 0.1% fee taken in BTC


def test_insufficient_balance(client: Any, sim_server: SimServer) -> None:
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USDT", "market", "buy", 1.0, None, {"newClientOrderId": "too-big"})
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("ETH/USDT", "market", "sell", 0.1, None)
    assert sim_server.sim.orders() == [] and sim_server.sim.free("USDT") == 10_000


@pytest.mark.parametrize(("params", "message"), [
    ({"type": "MARKET", "quantity": "0.000015"}, "Filter failure: LOT_SIZE"),
    ({"type": "MARKET", "quantity": "0.00001"}, "Filter failure: NOTIONAL"),
    ({"type": "LIMIT", "quantity": "0.01", "price": "40000.001", "timeInForce": "GTC"}, "Filter failure: PRICE_FILTER"),
])
def test_filter_failures_use_code_1013(client: Any, params: dict[str, str], message: str) -> None:
    # The implicit API bypasses ccxt's own rounding, so the exchange-side filter is what answers.
    with pytest.raises(ccxt.ExchangeError, match=message) as err:
        client.privatePostOrder({"symbol": "BTCUSDT", "side": "BUY", **params})
    assert '"code":-1013' in str(err.value)


def test_limit_order_rests_locks_funds_then_fills_at_its_price(client: Any, sim_server: SimServer) -> None:
    price = sim_server.sim.price("BTCUSDT")
    limit = (price * d("0.9")).quantize(Decimal("0.01"))
    order = client.create_order("BTC/USDT", "limit", "buy", 0.01, float(limit), {"newClientOrderId": "lim-1"})
    assert order["status"] == "open" and order["filled"] == 0
    assert [o["clientOrderId"] for o in client.fetch_open_orders("BTC/USDT")] == ["lim-1"]
    locked = (limit * d("0.01")).quantize(Decimal("1e-8"))  # the fee will be taken in BTC: no USDT locked for it
    assert d(client.fetch_balance()["used"]["USDT"]) == locked
    sim_server.sim.set_price("BTCUSDT", limit - 100)  # price falls through the limit
    filled = client.fetch_order("", "BTC/USDT", {"origClientOrderId": "lim-1"})
    assert filled["status"] == "closed" and d(filled["average"]) == limit  # maker fills at its own price
    bal = client.fetch_balance()
    assert d(bal["used"]["USDT"]) == 0 and d(bal["free"]["BTC"]) == d("0.00999")  # 0.01 less its fee in BTC
    with pytest.raises(ccxt.OrderNotFound, match="-2011"):  # a filled order cannot be canceled
        client.cancel_order("", "BTC/USDT", {"origClientOrderId": "lim-1"})


def test_cancel_releases_locked_funds(client: Any, sim_server: SimServer) -> None:
    limit = (sim_server.sim.price("ETHUSDT") * d("0.5")).quantize(Decimal("0.01"))
    client.create_order("ETH/USDT", "limit", "buy", 1.0, float(limit), {"newClientOrderId": "lim-c"})
    assert client.fetch_balance()["free"]["USDT"] < 10_000
    canceled = client.cancel_order("", "ETH/USDT", {"origClientOrderId": "lim-c"})
    assert canceled["status"] == "canceled"
    assert client.fetch_balance()["free"]["USDT"] == 10_000
    assert client.fetch_open_orders("ETH/USDT") == []


def test_unknown_order_lookups(client: Any) -> None:
    with pytest.raises(ccxt.OrderNotFound, match="Order does not exist"):
        client.fetch_order("", "BTC/USDT", {"origClientOrderId": "never-sent"})
    with pytest.raises(ccxt.OrderNotFound, match="Unknown order sent"):
        client.cancel_order("", "BTC/USDT", {"origClientOrderId": "never-sent"})
    with pytest.raises(ccxt.BadSymbol):
        client.publicGetTicker24hr({"symbol": "NOPEUSDT"})


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 3}], indirect=True)
def test_market_order_fills_in_chunks_across_queries(client: Any, sim_server: SimServer) -> None:
    placed = client.create_order("BTC/USDT", "market", "buy", 0.03, None, {"newClientOrderId": "chunky"})
    assert placed["status"] == "open" and d(placed["filled"]) == d("0.01") and len(placed["trades"]) == 1
    second = client.fetch_order("", "BTC/USDT", {"origClientOrderId": "chunky"})
    assert second["status"] == "open" and d(second["filled"]) == d("0.02")
    third = client.fetch_order("", "BTC/USDT", {"origClientOrderId": "chunky"})
    assert third["status"] == "closed" and d(third["filled"]) == d("0.03")
    trades = client.fetch_my_trades("BTC/USDT")
    assert sum(d(t["amount"]) for t in trades) == d("0.03") and len(trades) == 3
    price = sim_server.sim.price("BTCUSDT")
    spent = sum((price * d("0.01")).quantize(Decimal("1e-8")) for _ in range(3))  # fees are taken in BTC
    assert d(client.fetch_balance()["free"]["USDT"]) == Decimal(10_000) - spent
    assert d(client.fetch_balance()["free"]["BTC"]) == d("0.03") - 3 * (d("0.01") * FEE)
    assert d(client.fetch_balance()["used"]["USDT"]) == 0


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 4, "market_expire_after_chunks": 2}], indirect=True)
def test_thin_book_market_order_expires_partially_filled(client: Any, sim_server: SimServer) -> None:
    client.create_order("BTC/USDT", "market", "buy", 0.04, None, {"newClientOrderId": "thin"})
    done = client.fetch_order("", "BTC/USDT", {"origClientOrderId": "thin"})
    assert done["info"]["status"] == "EXPIRED" and d(done["filled"]) == d("0.02")
    assert d(client.fetch_balance()["used"]["USDT"]) == 0  # the unfilled half is released


def test_ioc_and_fok_limits(client: Any, sim_server: SimServer) -> None:
    price = sim_server.sim.price("BTCUSDT")
    below = float((price * d("0.9")).quantize(Decimal("0.01")))
    ioc = client.create_order("BTC/USDT", "limit", "buy", 0.01, below, {"timeInForce": "IOC"})
    assert ioc["info"]["status"] == "EXPIRED" and ioc["filled"] == 0
    above = float((price * d("1.1")).quantize(Decimal("0.01")))
    fok = client.create_order("BTC/USDT", "limit", "buy", 0.01, above, {"timeInForce": "FOK"})
    assert fok["status"] == "closed" and d(fok["average"]) == price  # a taker fills at the market, not its limit
    assert d(client.fetch_balance()["used"]["USDT"]) == 0


@pytest.mark.parametrize("sim_server", [{"market_fill_chunks": 2, "fill_on_query": False}], indirect=True)
def test_step_moves_working_orders_when_queries_do_not(client: Any, sim_server: SimServer) -> None:
    client.create_order("BTC/USDT", "market", "buy", 0.02, None, {"newClientOrderId": "stepped"})
    assert client.fetch_order("", "BTC/USDT", {"origClientOrderId": "stepped"})["status"] == "open"
    sim_server.sim.step()
    assert client.fetch_order("", "BTC/USDT", {"origClientOrderId": "stepped"})["status"] == "closed"
