"""Sync mode, 1d: the exchange's own sources are unavailable at the bar boundary (archive down, API rate limited);
CoinGecko then fills the decision bar with a provisional candle that has no volume (NaN).  The sync counts it as
complete and the snapshot is published.  Found by an audit: in the strategy every such pair's quote volume over
the liquidity window was NaN, so it failed the screen and the target dropped every coin (sell-all), where the same
bar with the exchange's candles (what the backtest decides on) holds three.  An unknown volume is now left out of
the mean (aura/strategy/indicators.quote_volume_at)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aura.strategy.params import StrategyParams
from aura.strategy.signal import compute_targets
from aura.strategy.state import SignalState
from aura.strategy.types import Panel
from services.ingest.sources import SyncSource
from services.signal.service import check_panel
from shared.config import load_settings
from shared.contracts import DataReady
from tests.ingest.conftest import DAY, NOW, SETTLED, Face, source

pytestmark = pytest.mark.integration
SYMBOLS = ["BNB/USDT", "BTC/USDT", "ETH/USDT", "LINK/USDT", "SOL/USDT", "XRP/USDT"]


def test_a_volume_less_fallback_candle_does_not_empty_the_book(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                               archive: Face, api: Face,
                                                               shared_data_dir: Path) -> None:
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_INGEST_SOURCE": "sync"})  # 400 bars, 1d
    now = {"ms": NOW - DAY + 300_000}
    venue.sim.set_now(now["ms"])
    src = SyncSource(settings, SYMBOLS, None, logging.getLogger("t"), config=make_config(provider_cooldown_s=0.0),
                     clock_ms=lambda: now["ms"])
    first = asyncio.run(src.next_step())
    assert first is not None and first.snapshot is not None and src.done(first)

    # The next bar: the exchange's archive and API are unavailable; CoinGecko has the day (01:00).
    archive.fault("drop")
    api.fault("rate_limit", "klines", retry_after_s=1)  # the rules still read
    now["ms"] = SETTLED
    venue.sim.set_now(SETTLED)
    step = asyncio.run(src.next_step())
    assert step is not None and step.snapshot is not None, step  # published as complete
    live = step.snapshot
    assert np.isnan(live.volume[-1]).all()  # every pair's decision-bar volume is NaN
    check_panel(live, DataReady(cycle_id=step.cycle_id, timeframe="1d", as_of_ms=step.as_of_ms, digest="x",
                                symbols=list(live.symbols), bars=len(live.timestamps), markets=[]))  # signal accepts

    # The same bars with the exchange's own volumes (what the backtest reads).
    vol = np.column_stack([source(shared_data_dir, "1d", s.replace("/", "_"))
                           .filter(source(shared_data_dir, "1d", s.replace("/", "_"))["timestamp"]
                                   .is_in(live.timestamps.tolist()))["volume"].to_numpy() for s in live.symbols])
    exchange = Panel(live.symbols, live.timestamps, live.open, live.high, live.low, live.close, vol)
    state = SignalState(regime="bull", last_timestamp=int(live.timestamps[-2]))
    params = StrategyParams()
    got, _ = compute_targets(live, params, state)
    want, _ = compute_targets(exchange, params, state)
    assert want.weights, "the exchange's candles give a book"
    assert got.weights == want.weights, f"fallback bar: {got.weights} ({got.regime}); exchange bar: {want.weights}"
