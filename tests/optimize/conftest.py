"""A few symbols of the bundled replay data, with the GOLD and SPY benchmarks aligned to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura.backtest.data import default_rules, load_benchmark, load_panel
from aura.backtest.fast import Market
from aura.optimize.objective import BENCHMARK_NAMES, BenchmarkCloses

REPLAY = Path(__file__).resolve().parents[2] / "data" / "replay"
SYMBOLS = ["BTC_USDT", "ETH_USDT", "BNB_USDT", "XRP_USDT", "LTC_USDT"]
DAY_MS = 86_400_000


@pytest.fixture(scope="session")
def replay_market() -> Market:
    panel = load_panel(REPLAY, "1d", SYMBOLS)
    return Market.build(panel, default_rules(panel).rules)


@pytest.fixture(scope="session")
def replay_benchmarks(replay_market: Market) -> BenchmarkCloses:
    series = {}
    for name in BENCHMARK_NAMES:
        loaded = load_benchmark(REPLAY, name)
        assert loaded is not None, f"{REPLAY}/benchmarks/1d/{name}.parquet missing"
        series[name] = loaded
    return BenchmarkCloses.align(series, replay_market.panel.timestamps, DAY_MS)
