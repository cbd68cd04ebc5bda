"""Sync mode: a pair the venue lists after ingest started enters the universe at the next markets refresh (the
VenueUniverse reloads the markets).  Found by an audit: the ccxt tail provider (built once and kept across polls)
answered from the market list it loaded at its first fetch, where the pair did not exist, so it returned nothing for
it, the newest bar stayed a pending gap, and every cycle was stale until ingest restarted (on 1h the archive's daily
files never hold the current hour and CoinGecko does not serve 1h).  A symbol missing from the list now makes it be
read again, at most every MISSING_RELOAD_MS."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from services.ingest.sources import SyncSource
from shared.config import load_settings
from tests.ingest.conftest import ms

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def test_a_pair_listed_while_ingest_runs_gets_its_bars(tmp_path: Path, make_config, venue: Any) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_SNAPSHOT_BARS": "60", "AURA_INGEST_SOURCE": "sync",
                              "AURA_TIMEFRAME": "1h", "AURA_MARKETS_REFRESH_S": "3600"})
    symbols = ["BTC/USDT", "UNI/USDT"]  # UNI/USDT: listed on 2020-09-17 in the shared data
    now = {"ms": ms("2020-09-17") - 6 * HOUR + 300_000}
    venue.sim.set_now(now["ms"])
    make = lambda: SyncSource(settings, symbols, None, logging.getLogger("t"),  # noqa: E731
                              config=make_config(provider_cooldown_s=0.0), clock_ms=lambda: now["ms"])
    src = make()
    first = asyncio.run(src.next_step())
    assert first is not None and first.snapshot is not None and first.snapshot.symbols == ("BTC/USDT",), first
    assert src.done(first)

    steps = []
    for hour in range(30, 34):  # the venue lists UNI once its first (daily) bar closed; four hourly polls later
        now["ms"] = ms("2020-09-17") + hour * HOUR + 300_000
        venue.sim.set_now(now["ms"])
        step = asyncio.run(src.next_step())
        assert step is not None
        steps.append((step.cycle_id, step.snapshot.symbols if step.snapshot else None, step.missing))
        src.done(step)
    # A fresh source (what a restart of ingest is) completes the very same bar at once, UNI included.
    again = asyncio.run(make().next_step())
    assert again is not None and again.snapshot is not None and "UNI/USDT" in again.snapshot.symbols, again
    assert all(s[1] is not None for s in steps), (f"running ingest, every cycle stale: {steps}; restarted: "
                                                  f"{again.cycle_id} complete with {again.snapshot.symbols}; "
                                                  f"readiness: {src.readiness(120.0)}")
