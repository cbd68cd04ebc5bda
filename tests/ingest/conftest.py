"""Fixtures for the ingest tests: real-format fake servers over the real shared candles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from services.ingest.fakes import FakeBinanceApi, FakeBinanceArchive, FakeCoinGecko, MarketData
from services.ingest.providers.base import CLOSE_GRACE_MS
from services.ingest.sync import IngestConfig

DAY = 86_400_000
HOUR = 3_600_000
# The shared data ends with the 2024-12-05 daily candle: "now" is the next midnight unless a test moves it.
NOW = 1_733_443_200_000  # 2024-12-06 00:00 UTC
# Our clock when a test syncs "at NOW": a candle counts as closed only once the close grace after its close is
# over, so this is the first moment the 2024-12-05 candle the fakes publish at NOW is taken.
NOW_SYNC = NOW + CLOSE_GRACE_MS
SETTLED = NOW + HOUR  # CoinGecko publishes a completed UTC day at 00:35: its fallback tests run at 01:00
T2017 = 1_483_228_800_000  # 2017-01-01
T2024 = 1_704_067_200_000  # 2024-01-01


def ms(text: str) -> int:
    from services.ingest.cli import parse_time

    return parse_time(text)


def source(shared: Path, timeframe: str, stem: str) -> pl.DataFrame:
    return pl.read_parquet(shared / "binance" / timeframe / f"{stem}.parquet")


def cached(cfg: IngestConfig, timeframe: str, stem: str) -> pl.DataFrame:
    return pl.read_parquet(cfg.cache_root / "binance" / timeframe / f"{stem}.parquet")


@pytest.fixture(scope="session")
def market(shared_data_dir: Path) -> MarketData:
    return MarketData(shared_data_dir)


@pytest.fixture
def data(shared_data_dir: Path) -> MarketData:
    """A private MarketData (tests may override series without affecting others)."""
    return MarketData(shared_data_dir)


@pytest.fixture
def archive(data: MarketData) -> Iterator[FakeBinanceArchive]:
    with FakeBinanceArchive(data, NOW) as server:
        yield server


@pytest.fixture
def api(data: MarketData) -> Iterator[FakeBinanceApi]:
    with FakeBinanceApi(data, NOW) as server:
        yield server


@pytest.fixture
def gecko(data: MarketData) -> Iterator[FakeCoinGecko]:
    with FakeCoinGecko(data, NOW) as server:
        yield server


@pytest.fixture
def make_config(tmp_path: Path, archive: FakeBinanceArchive, api: FakeBinanceApi, gecko: FakeCoinGecko):
    """IngestConfig against the fakes; keyword overrides (e.g. providers=("archive",)) go straight through."""
    sleeps: list[float] = []

    def factory(**overrides: object) -> IngestConfig:
        base: dict[str, object] = {
            "cache_root": tmp_path / "cache",
            "archive_url": archive.url,
            "api_urls": {"binance": api.url},
            "coingecko_url": gecko.url,
            "ccxt_rate_limit_ms": 1,  # the fake does not rate-limit; ccxt's limiter stays enabled
            "coingecko_min_interval_s": 0.0,
            "sleep": sleeps.append,  # record backoff waits instead of sleeping
        }
        base.update(overrides)
        return IngestConfig(**base)  # type: ignore[arg-type]

    factory.sleeps = sleeps  # type: ignore[attr-defined]
    return factory
