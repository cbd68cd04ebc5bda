"""AURA_TESTNET picks the exchange's testnet: ccxt's sandbox URL set, or the address given for the testnet; an
address of the main venue never applies while it is on (it used to turn the switch off silently)."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.executor.brokers.ccxt_client import make_ccxt_exchange, venue_url
from shared.config import load_settings


def test_the_testnet_switch_picks_the_testnet_hosts() -> None:
    """Without a simulator: AURA_TESTNET picks ccxt's sandbox URL set (testnet.binance.vision, no sapi) and the
    testnet address; a main-venue address never applies while it is on."""
    live = {"AURA_EXCHANGE_API_URL": "http://main.test:1", "AURA_EXCHANGE_TESTNET_URL": "http://testnet.test:2"}
    assert venue_url(load_settings({**live, "AURA_TESTNET": "true"})) == "http://testnet.test:2"
    assert venue_url(load_settings({**live, "AURA_TESTNET": "false"})) == "http://main.test:1"
    assert venue_url(load_settings({"AURA_TESTNET": "true", "AURA_EXCHANGE_API_URL": "http://main.test:1"})) is None
    sandbox = make_ccxt_exchange("binance", testnet=True, async_=False)
    assert sandbox.urls["api"]["private"] == "https://testnet.binance.vision/api/v3"
    assert "sapi" not in sandbox.urls["api"]  # the spot testnet has no sapi endpoints
    pointed = make_ccxt_exchange("binance", testnet=True, base_url="http://testnet.test:2", async_=False)
    assert set(pointed.urls["api"]) == set(sandbox.urls["api"])
    assert {urlsplit(u).netloc for u in pointed.urls["api"].values()} == {"testnet.test:2"}
