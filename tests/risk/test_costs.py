"""Risk's cost rate: the paper broker's fee in a dry run; live, the venue's taker fee (its public markets through
the same key-less ccxt client risk reads tickers with, here against the venue simulator) plus the slippage
setting.  Live risk plans nothing until the fee has been read."""

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
from services.risk.costs import Costs
from services.risk.prices import make_price_source
from shared.config import load_settings

NOW = 1_733_443_200_000  # 2024-12-06 00:00 UTC
LOG = "t.risk.costs"


@pytest.fixture
def venue(shared_data_dir: Path) -> Iterator[SimServer]:
    with SimServer(config=SimConfig(data_dir=shared_data_dir, speed=0, now=NOW)) as server:
        yield server


def _ctx(tmp_path: Path, **env: str) -> Any:
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_INGEST_SOURCE": "sync",
                              "AURA_PAPER_FEE_RATE": "0.004", "AURA_PAPER_SLIPPAGE_BPS": "7", **env})
    return types.SimpleNamespace(settings=settings, logger=logging.getLogger(LOG))


def test_a_dry_run_prices_costs_as_the_paper_broker_charges(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    costs = Costs(ctx.settings, make_price_source(ctx), ctx.logger)
    rate = asyncio.run(costs.boot(asyncio.Event()))
    assert rate is not None and rate.rate == pytest.approx(0.004 + 0.0007)
    assert costs.readiness() == (True, rate.describe()) and "AURA_PAPER_FEE_RATE" in rate.source


@pytest.mark.integration
def test_live_costs_are_the_venues_taker_fee_plus_slippage(tmp_path: Path, venue: SimServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    ctx = _ctx(tmp_path, AURA_DRY_RUN="false", AURA_MAX_ORDER_USDT="1000", AURA_EXCHANGE_API_URL=venue.base_url,
               AURA_MARKETS_REFRESH_S="0.2")
    source = make_price_source(ctx)

    async def scenario() -> None:
        costs = Costs(ctx.settings, source, ctx.logger)
        assert costs.readiness()[0] is False  # nothing is priced live before the venue's fee is known
        # The venue is down at boot: risk waits (not ready, saying why), then reads it once it answers.
        venue.sim.faults.add(Fault("http_error", path="*exchangeInfo*", status=500, count=None))
        booting = asyncio.create_task(costs.boot(asyncio.Event()))
        # Until its first read has failed (polled: a fixed wait raced that read on a loaded machine).
        deadline = time.monotonic() + 10
        while not any("unreadable" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        ready, detail = costs.readiness()
        assert not ready and "waiting for binance's taker fee" in detail
        venue.sim.faults.clear()
        rate = await asyncio.wait_for(booting, 10)
        assert rate is not None
        # Binance's published taker fee (ccxt fills market['taker'] from it: exchangeInfo carries no fee, on the
        # simulator as on Binance), which is what the simulator charges by default; AURA_PAPER_FEE_RATE is unused.
        assert rate.fee == 0.001 == venue.sim.config.fee_rate
        assert rate.rate == pytest.approx(0.001 + 0.0007)
        assert costs.readiness() == (True, rate.describe()) and "binance taker fee" in rate.describe()
        # Read again once markets_refresh_s old; a failed re-read keeps the last fee, logged and in /readyz.
        await asyncio.sleep(0.3)
        venue.sim.faults.add(Fault("http_error", path="*exchangeInfo*", status=500, count=None))
        kept = await costs.current()
        assert kept.fee == 0.001 and "last re-read failed" in costs.readiness()[1]
        venue.sim.faults.clear()
        await asyncio.sleep(0.3)
        assert (await costs.current()).fee == 0.001 and "failed" not in costs.readiness()[1]
        await source.close()

    with caplog.at_level(logging.INFO, logger=LOG):
        asyncio.run(scenario())
    tagged = [r for r in caplog.records if getattr(r, "tag", None) == "COST_RATE"]
    booted = [r for r in tagged if "cost gate prices trades at" in r.getMessage()]
    assert len(booted) == 1 and booted[0].fields["fee"] == 0.001  # type: ignore[attr-defined]
    assert any("unreadable" in r.getMessage() for r in tagged) and any("re-read failed" in r.getMessage()
                                                                       for r in tagged)
