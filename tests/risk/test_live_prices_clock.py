"""Live risk stamps its ticker reads with the exchange's clock, never the host's.

The stamp (``PriceRead.as_of_ms``) is the risk tick exit plan's data time, which the executor ages on the
exchange's clock, and the time the kill-switch cooldown counts on.  A rehearsal runs the venue's clock years in the
past: stamped by the host, a tick exit was never stale to the executor and a latched switch re-armed at the first
tick.  Here the venue simulator's clock stands still in March 2021, so the stamp must be exactly its time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aura.exchange_sim import Fault, SimConfig, SimServer
from aura.strategy.risk_gates import rearm_due
from services.risk.prices import LivePrices, make_price_source
from shared.config import load_settings

pytestmark = pytest.mark.integration
VENUE_NOW = 1_614_600_000_000  # 2021-03-01 12:00 UTC: years before any host running this test
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
LOG = "t.risk.prices"


@pytest.fixture
def venue(shared_data_dir: Path) -> Iterator[SimServer]:
    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"), speed=0,
                       now=VENUE_NOW)
    with SimServer(config=config) as server:
        yield server


def live_source(tmp_path: Path, venue: SimServer) -> Any:
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_DRY_RUN": "false", "AURA_INGEST_SOURCE": "sync",
                              "AURA_MAX_ORDER_USDT": "1000", "AURA_EXCHANGE_API_URL": venue.base_url})
    source = make_price_source(types.SimpleNamespace(settings=settings, logger=logging.getLogger(LOG)))
    assert isinstance(source, LivePrices)
    return source


def test_a_live_price_read_carries_the_exchanges_time_not_the_hosts(tmp_path: Path, venue: SimServer) -> None:
    source = live_source(tmp_path, venue)

    async def scenario() -> tuple[Any, int]:
        try:
            await source.read(["BTC/USDT"])  # the first read loads the markets (and ccxt its clock offset)
            before = venue.sim.request_counts().get("GET /api/v3/time", 0)
            read = await source.read(["BTC/USDT", "ETH/USDT"])
            return read, venue.sim.request_counts().get("GET /api/v3/time", 0) - before
        finally:
            await source.close()

    read, time_reads = asyncio.run(scenario())
    assert read is not None and read.prices["BTC/USDT"] == float(venue.sim.price("BTCUSDT"))
    assert read.as_of_ms == VENUE_NOW == venue.sim.now_ms()
    assert read.as_of_ms < time.time() * 1000 - YEAR_MS  # not the host's clock
    assert time_reads == 1  # one extra request per tick
    # The kill-switch counts on the cycles' frame, the open of the newest closed bar (2021-02-28 on 1d at
    # 2021-03-01 12:00): counted on the exchange's clock, a bar ahead of it, a switch latched by the cycle of
    # 2021-02-28 with a one-bar cooldown re-armed at the first tick after it (found by an audit).
    assert read.bar_open_ms == 1_614_470_400_000
    latched_by_the_cycle = 1_614_470_400_000
    assert not rearm_due(True, False, latched_by_the_cycle, read.bar_open_ms, 1, DAY_MS)
    assert rearm_due(True, False, latched_by_the_cycle, read.bar_open_ms + DAY_MS, 1, DAY_MS)  # the next bar's
    # A latch by this tick is stamped with the bar its prices are of, still forming (2021-03-01): the backtest
    # would catch the loss at that bar's decision.  Stamped with the closed one, a one-bar halt ended at the next
    # day's first tick, half a day later (found by an audit).
    assert read.latch_ms == 1_614_556_800_000
    assert not rearm_due(True, False, read.latch_ms, read.bar_open_ms + DAY_MS, 1, DAY_MS)
    assert rearm_due(True, False, read.latch_ms, read.bar_open_ms + 2 * DAY_MS, 1, DAY_MS)


def test_an_unreadable_exchange_clock_is_a_failed_read(tmp_path: Path, venue: SimServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """No time, no prices: the tick's sync guard treats it as any failed ticker read (never the host's clock)."""
    source = live_source(tmp_path, venue)
    venue.sim.faults.add(Fault("http_error", path="/api/v3/time", status=500, count=None))

    async def scenario() -> Any:
        try:
            return await source.read(["BTC/USDT"])
        finally:
            await source.close()

    with caplog.at_level(logging.INFO, logger=LOG):
        assert asyncio.run(scenario()) is None
    said = [r for r in caplog.records if getattr(r, "tag", None) == "RISK_TICK"]
    assert said and "exchange clock" in said[0].getMessage()
    assert not any(path.startswith("GET /api/v3/ticker") for path in venue.sim.request_counts())
