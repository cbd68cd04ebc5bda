"""A fresh simulator per test on a free loopback port, serving real 1d candles of BTC and ETH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from services.executor.brokers.ccxt_client import make_ccxt_binance

START = "2024-01-01"


@pytest.fixture(scope="session")
def candle_dir(shared_data_dir: Path) -> Path:
    return shared_data_dir / "binance" / "1d"


def close_on(candle_dir: Path, symbol_file: str, day: str) -> float:
    """The real close of one daily candle, read straight from the parquet (independent of the simulator)."""
    df = pl.read_parquet(candle_dir / f"{symbol_file}.parquet")
    ts = int(pl.Series([day]).str.to_datetime(time_zone="UTC").dt.epoch("ms")[0])
    return float(df.filter(pl.col("timestamp") == ts)["close"][0])


def make_config(candle_dir: Path, **overrides: Any) -> SimConfig:
    kwargs: dict[str, Any] = {"data_dir": candle_dir, "symbols": ("BTCUSDT", "ETHUSDT"), "start": START}
    kwargs.update(overrides)
    return SimConfig(**kwargs)


@pytest.fixture
def sim_server(candle_dir: Path, request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """Override the config with ``@pytest.mark.parametrize('sim_overrides', [{...}])`` style indirect params."""
    overrides = getattr(request, "param", {}) or {}
    with SimServer(config=make_config(candle_dir, **overrides)) as server:
        yield server


def sync_client(server: SimServer, *, key: str = DEFAULT_API_KEY, secret: str = DEFAULT_API_SECRET,
                timeout_ms: int = 3000, **kwargs: Any) -> Any:
    return make_ccxt_binance(server.base_url, key, secret, async_=False, timeout_ms=timeout_ms,
                             enable_rate_limit=False, adjust_for_time_difference=False, **kwargs)


@pytest.fixture
def client(sim_server: SimServer) -> Any:
    ex = sync_client(sim_server)
    ex.load_markets()
    return ex
