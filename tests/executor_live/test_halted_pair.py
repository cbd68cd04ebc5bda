"""A pair halted (BREAK) after the executor read the rules is skipped from the next plan on, not sent again.

Found by an audit: the executor noticed only pairs gone from the market list; a halted pair stays listed (status
BREAK), its ticker keeps its last price, and its rules were the cached copy until the daily read, so tick exits
and plan legs on it were sent and refused "Market is closed" at every risk tick.  Now the refusal marks the pair,
the next plan reads the rules again, and rules leave halted markets out.

MATIC's data in the shared candles ends 2023-04-18: the simulator lists it BREAK after that day.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from services.executor.brokers.base import OrderRejectedError
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.markets import MarketRules
from shared.health import HealthState

pytestmark = pytest.mark.integration
DAY, HOUR = 86_400_000, 3_600_000
LAST_BAR = 1_681_776_000_000  # MATICUSDT's last daily bar opens (2023-04-18)
LOG = logging.getLogger("aura.test.halted")


def test_a_pair_halted_after_the_rules_were_read_is_skipped_after_its_first_refusal(shared_data_dir: Path) -> None:
    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "MATICUSDT"), speed=0,
                       now=LAST_BAR + DAY + 23 * HOUR, balances={"USDT": 10_000})
    with SimServer(config=config) as sim:
        broker = CcxtBroker("binance", api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET, base_url=sim.base_url,
                            enable_rate_limit=False, adjust_for_time_difference=False)

        async def scenario() -> tuple[bool, str, list[str], bool, bool]:
            try:
                rules = await broker.load_markets()
                markets = MarketRules(broker, rules, 86_400, LOG, HealthState("executor"),
                                      clock=lambda: asyncio.sleep(0, sim.sim.now_ms()))
                markets.loaded_ms = sim.sim.now_ms()
                sim.sim.set_now(LAST_BAR + 2 * DAY + HOUR)  # halted an hour into the next day
                kept = "MATIC/USDT" in await markets.for_symbols(["MATIC/USDT"])  # not due, nothing known yet
                try:
                    await broker.place_market_order("MATIC/USDT", "buy", 20.0, "aura-halted-0", 1.0)
                    refusal = ""
                except OrderRejectedError as exc:
                    refusal = str(exc)
                marked = broker.unlisted(["MATIC/USDT", "BTC/USDT"])
                after = await markets.for_symbols(["MATIC/USDT", "BTC/USDT"])
                return kept, refusal, marked, "MATIC/USDT" in after, "BTC/USDT" in after
            finally:
                await broker.close()

        kept, refusal, marked, still_ruled, btc_ruled = asyncio.run(scenario())
    assert kept and "closed" in refusal.lower(), refusal
    assert marked == ["MATIC/USDT"]  # the refusal marks the halted pair only
    assert not still_ruled and btc_ruled  # rules read again: the halted pair has none, so its legs are skipped
