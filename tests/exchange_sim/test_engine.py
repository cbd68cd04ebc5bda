"""The engine without HTTP: determinism, rules, and the replay clock."""

from __future__ import annotations

import json
import shutil
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from aura.exchange_sim import ExchangeSim
from aura.exchange_sim.errors import BinanceError
from aura.exchange_sim.market_data import derive_rules
from tests.exchange_sim.conftest import make_config


def _trade_prices(candle_dir: Path, seed: int) -> list[str]:
    sim = ExchangeSim(make_config(candle_dir, jitter_bps=50, seed=seed), wall_ms=lambda: 1_700_000_000_000)
    for i in range(5):
        sim.new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001",
                       "newClientOrderId": f"o{i}"})
    return [str(t.price) for o in sim.orders() for t in o.trades]


def test_fills_are_deterministic_for_a_seed(candle_dir: Path) -> None:
    first = _trade_prices(candle_dir, seed=7)
    assert first == _trade_prices(candle_dir, seed=7)
    assert first != _trade_prices(candle_dir, seed=8)
    assert len(set(first)) > 1  # the jitter really moved prices


@pytest.mark.parametrize(("price", "step", "tick"), [
    (97_000.0, "0.00001", "0.01"), (3_800.0, "0.0001", "0.01"), (0.4, "1", "0.00001"), (2.5e-5, "1", "1E-8"),
])
def test_derived_rules_match_binance_sizes(price: float, step: str, tick: str) -> None:
    rules = derive_rules(price)
    assert rules.step_size == Decimal(step) and rules.tick_size == Decimal(tick)
    assert rules.min_notional == 5


def test_markets_json_rules_win_over_derived(candle_dir: Path, tmp_path: Path) -> None:
    shutil.copy(candle_dir / "XRP_USDT.parquet", tmp_path / "XRP_USDT.parquet")
    (tmp_path / "markets.json").write_text(json.dumps({"_comment": "x", "XRP/USDT": {
        "step_size": 1.0, "tick_size": 0.0001, "min_qty": 1.0, "min_notional": 5.0}}))
    sim = ExchangeSim(make_config(tmp_path, symbols=None))
    rules = sim.market.rules["XRPUSDT"]
    assert (rules.step_size, rules.tick_size, rules.min_qty) == (Decimal("1.0"), Decimal("0.0001"), Decimal("1.0"))


def test_symbols_outside_their_data_are_not_tradable(candle_dir: Path) -> None:
    sim = ExchangeSim(make_config(candle_dir, symbols=("BTCUSDT", "MATICUSDT", "WIFUSDT"), start="2024-01-01"))
    assert sim.market.listed() == ["BTCUSDT", "MATICUSDT"]  # WIF lists in March 2024
    assert not sim.market.is_trading("MATICUSDT")  # its data ends in 2023
    info = {s["symbol"]: s["status"] for s in sim.market.exchange_info(None, 0)["symbols"]}
    assert info == {"BTCUSDT": "TRADING", "MATICUSDT": "BREAK"}
    sim.advance(100)
    assert "WIFUSDT" in sim.market.listed()


def test_orders_on_a_halted_symbol_are_refused(candle_dir: Path) -> None:
    sim = ExchangeSim(make_config(candle_dir, symbols=("BTCUSDT", "MATICUSDT"), start="2024-01-01"))
    with pytest.raises(BinanceError, match="Market is closed") as err:
        sim.new_order({"symbol": "MATICUSDT", "side": "BUY", "type": "MARKET", "quantity": "10"})
    assert err.value.code == -1013 and sim.orders() == []



def _buy_then_sell_all(sim: ExchangeSim) -> list[tuple[str, Decimal]]:
    """(commission asset, commission) of a 0.01 BTC market buy and a market sell of all the BTC it left."""
    sim.new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": "b"})
    sim.new_order({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": str(sim.free("BTC")),
                   "newClientOrderId": "s"})
    return [(t.commission_asset, t.commission) for o in sim.orders() for t in o.trades]


def test_fees_are_taken_in_the_asset_received_by_default_and_in_quote_on_request(candle_dir: Path) -> None:
    received = ExchangeSim(make_config(candle_dir))
    price = received.price("BTCUSDT")
    sold = Decimal("0.00999") * price  # the 0.01 BTC bought less its fee, taken in BTC
    sell_fee = (sold * Decimal("0.001")).quantize(Decimal("1e-8"), ROUND_HALF_EVEN)
    assert _buy_then_sell_all(received) == [("BTC", Decimal("0.00001")), ("USDT", sell_fee)]
    assert received.free("BTC") == 0
    assert received.free("USDT") == Decimal(10_000) - Decimal("0.01") * price + sold - sell_fee

    quote = ExchangeSim(make_config(candle_dir, fee_asset="quote"))
    assert [asset for asset, _ in _buy_then_sell_all(quote)] == ["USDT", "USDT"] and quote.free("BTC") == 0
    with pytest.raises(ValueError, match="fee_asset"):
        ExchangeSim(make_config(candle_dir, fee_asset="BNB"))
    with pytest.raises(ValueError, match="fee_asset"):
        quote.configure(fee_asset="base")
    quote.configure(fee_asset="received")  # changeable at run time, like the fee rate
    assert quote.config.fee_asset == "received"


@pytest.mark.parametrize("chunks", [1, 4])
def test_a_quote_amount_market_buy_never_spends_more_than_its_quote_however_the_price_walks(
        candle_dir: Path, chunks: int) -> None:
    """Binance spends at most quoteOrderQty and buys fewer coins when the price walks up.  Before, the simulator
    sized the lot at the ask and filled it at the walked price: 499.67 USDT asked for cost 625.70 under a 30%
    jitter, so rehearsals overspent where the venue cannot (and the executor's cap looked broken)."""
    sim = ExchangeSim(make_config(candle_dir, jitter_bps=3000, seed=3, market_fill_chunks=chunks,
                                  fill_on_query=True), wall_ms=lambda: 1_700_000_000_000)
    for i in range(8):
        sim.new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "500",
                       "newClientOrderId": f"q{i}"})
        for _ in range(chunks):  # a chunked order fills a chunk per query
            sim.get_order({"symbol": "BTCUSDT", "origClientOrderId": f"q{i}"})
    orders = sim.orders()
    assert len(orders) == 8
    for order in orders:
        spent = sum((t.price * t.qty for t in order.trades), Decimal(0))
        assert order.cum_quote == spent and Decimal(400) < spent <= Decimal(500), (order.client_order_id, spent)
        assert order.status == "FILLED" and order.orig_qty == order.executed_qty, order
    walked = [o for o in orders if any(t.price > orders[0].trades[0].price for t in o.trades)]
    assert walked or len({t.price for o in orders for t in o.trades}) > 1  # the jitter really moved prices
