"""Every order is priced in the account's currency (USDT), because every cap is.

The incident (found by an audit): the executor loaded the rules of every spot pair the venue lists, so a signed
plan buying ETH/BTC was traded, its notional (in BTC) held against AURA_MAX_ORDER_USDT as if it were USDT: with a
cap of 100, one order spent ~2,846 USDT worth of BTC, and the journal booked BTC spent as USDT cash.  Now the
executor knows only USDT pairs, the shape check refuses any other (shared/plan_checks.py), and risk refuses a
target that weights one (tests/risk/test_verify.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.exchange_calls import ExecutionLimits
from tests.executor_live.conftest import LIMITS, Rig, open_rig
from tests.executor_live.test_live_guards import live_run, plan_at

pytestmark = pytest.mark.integration


@pytest.fixture
def cross_rig(shared_data_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """The simulator listing ETH/BTC beside BTC/USDT and ETH/USDT (its candles the ratio of theirs)."""
    data = tmp_path / "1d"
    data.mkdir()
    source = shared_data_dir / "binance" / "1d"
    for name in ("BTC_USDT", "ETH_USDT"):
        shutil.copy(source / f"{name}.parquet", data)
    eth, btc = (pl.read_parquet(source / f"{n}_USDT.parquet") for n in ("ETH", "BTC"))
    both = eth.join(btc, on="timestamp", suffix="_btc")
    ratio = both.select("timestamp", open=pl.col("open") / pl.col("open_btc"),
                        close=pl.col("close") / pl.col("close_btc"), volume=pl.col("volume"))
    ratio.select("timestamp", "open", high=pl.max_horizontal("open", "close") * 1.001,
                 low=pl.min_horizontal("open", "close") * 0.999, close="close", volume="volume",
                 ).write_parquet(data / "ETH_BTC.parquet")
    cfg = {"data_dir": data, "symbols": ("BTCUSDT", "ETHUSDT", "ETHBTC"), "start": "2024-01-01",
           "balances": {"USDT": 10_000},
           "rules": {"ETHBTC": {"step_size": 0.0001, "tick_size": 0.00001, "min_notional": 0.0001}}}
    with open_rig(cfg, request.node.name, tmp_path / "journal.sqlite") as rig:
        yield rig


def test_a_pair_not_quoted_in_usdt_is_never_traded(cross_rig: Rig) -> None:
    rig = cross_rig
    btc_usdt = rig.price("BTC/USDT")
    bought = live_run(rig, plan_at(rig, [("BTC/USDT", "buy", round(3000 / btc_usdt, 5), btc_usdt)]),
                      ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 5000.0}))
    assert bought.status == "executed", bought.reasons
    btc_before = rig.server.sim.free("BTC")

    async def rules(broker: CcxtBroker) -> list[str]:
        return sorted(await broker.load_markets())

    assert rig.run(rules) == ["BTC/USDT", "ETH/USDT"]  # the venue lists ETH/BTC; the executor does not take it

    eth_btc = rig.price("ETH/BTC")
    capped = ExecutionLimits(**{**LIMITS.__dict__, "max_order_usdt": 100.0})
    run = live_run(rig, plan_at(rig, [("ETH/BTC", "buy", round(float(btc_before) * 0.95 / eth_btc, 4), eth_btc)]),
                   capped)
    assert rig.server.sim.free("BTC") == btc_before, "BTC was spent on an ETH/BTC order"
    assert [o.symbol for o in rig.server.sim.orders()] == ["BTCUSDT"]
    assert run.status == "partial" and any("ETH/BTC" in r for r in run.reasons), run.reasons
    assert "ETH/BTC" not in rig.journal.latest_snapshot().holdings
