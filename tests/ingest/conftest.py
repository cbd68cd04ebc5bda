"""Fixtures for the ingest tests: the venue simulator over the real shared candles, its clock stopped at NOW.

One simulator serves all three providers (archive, Binance API, CoinGecko) from one market and one clock, as
a rehearsal does; ``archive``, ``api`` and ``gecko`` are views of its faces (their URL, the requests each got,
faults on its paths).  A test that needs a *different* venue (another exchange, CoinGecko's USD aggregate)
starts a second simulator with ``other_venue``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from aura.exchange_sim import Fault, SimConfig, SimServer
from aura.exchange_sim.candles import CandleStore
from services.ingest.providers.base import CLOSE_GRACE_MS
from services.ingest.sync_config import IngestConfig

DAY = 86_400_000
HOUR = 3_600_000
# The shared data ends with the 2024-12-05 daily candle: "now" is the next midnight unless a test moves it.
NOW = 1_733_443_200_000  # 2024-12-06 00:00 UTC
# Our clock when a test syncs "at NOW": a candle counts as closed only once the close grace after its close is
# over, so this is the first moment the 2024-12-05 candle the venue publishes at NOW is taken.
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


@contextlib.contextmanager
def other_venue(shared: Path, now: int = NOW) -> Iterator[SimServer]:
    """A second venue simulator over the shared candles, its clock stopped at ``now`` (``.sim.store.set`` makes
    its data differ)."""
    with SimServer(config=SimConfig(data_dir=shared, speed=0, now=now)) as server:
        yield server


@dataclass
class Face:
    """One face of the venue as a test sees it.  ``reset_counts`` and ``clear_faults`` touch this face only."""

    venue: SimServer
    url: str
    prefix: str  # the request paths this face owns

    @property
    def paths(self) -> list[str]:
        """Its requests (path and query, relative to ``url``), oldest first."""
        strip = len(self.url) - len(self.venue.base_url)
        return [p[strip:] for p in self.venue.sim.faults.requests(self.prefix)]

    @property
    def total(self) -> int:
        return len(self.paths)

    @property
    def counts(self) -> Counter[str]:
        """Requests per kind: "zip" / "checksum" for archive files, else the last path segment ("klines")."""
        def kind(path: str) -> str:
            path = path.split("?", 1)[0]
            return "checksum" if path.endswith(".CHECKSUM") else "zip" if path.endswith(".zip") else \
                path.rsplit("/", 1)[-1]
        return Counter(kind(p) for p in self.paths)

    def fault(self, kind: str, match: str = "", **fields: Any) -> None:
        """Arm ``kind`` on this face's paths containing ``match``, until cleared unless ``count`` is given."""
        fields.setdefault("count", None)
        self.venue.sim.faults.add(Fault(kind, path=f"{self.prefix}*{match}*" if match else f"{self.prefix}*",
                                        **fields))

    def clear_faults(self) -> None:
        self.venue.sim.faults.clear(self.prefix)

    def reset_counts(self) -> None:
        self.venue.sim.faults.reset_counts(self.prefix)


@pytest.fixture
def venue(shared_data_dir: Path) -> Iterator[SimServer]:
    with other_venue(shared_data_dir) as server:
        yield server


@pytest.fixture
def data(venue: SimServer) -> CandleStore:
    """The venue's candles: a test may replace a series (every face then serves the replacement)."""
    return venue.sim.store


@pytest.fixture
def archive(venue: SimServer) -> Face:
    return Face(venue, venue.base_url, "/data/")


@pytest.fixture
def api(venue: SimServer) -> Face:
    return Face(venue, venue.base_url, "/api/")


@pytest.fixture
def gecko(venue: SimServer) -> Face:
    return Face(venue, venue.coingecko_url, "/coingecko/")


@pytest.fixture
def make_config(tmp_path: Path, archive: Face, api: Face, gecko: Face):
    """IngestConfig against the venue; keyword overrides (e.g. providers=("archive",)) go straight through."""
    sleeps: list[float] = []

    def factory(**overrides: object) -> IngestConfig:
        base: dict[str, object] = {
            "cache_root": tmp_path / "cache",
            "archive_url": archive.url,
            "api_urls": {"binance": api.url},
            "coingecko_url": gecko.url,
            "ccxt_rate_limit_ms": 1,  # the simulator does not rate-limit; ccxt's limiter stays enabled
            "coingecko_min_interval_s": 0.0,
            "sleep": sleeps.append,  # record backoff waits instead of sleeping
        }
        base.update(overrides)
        return IngestConfig(**base)  # type: ignore[arg-type]

    factory.sleeps = sleeps  # type: ignore[attr-defined]
    return factory


def top_by_volume(venue: SimServer, n: int) -> list[str]:
    """The universe screen computed independently of ingest, from the simulator's own market at its clock: the
    trading USDT pairs, largest 24h quote volume first."""
    market = venue.sim.market
    vols = {sym: float(market.ticker_24h(sym)["quoteVolume"]) for sym in market.listed()
            if market.is_trading(sym) and market.series[sym].quote == "USDT"}
    return [f"{market.series[s].base}/{market.series[s].quote}" for s in sorted(vols, key=lambda s: (-vols[s], s))[:n]]
