"""The live broker: generic CCXT with credentials only the executor reads."""

from __future__ import annotations

import logging

from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.ccxt_client import venue_url
from services.executor.secrets import load_credentials
from shared.config import ConfigError, Settings
from shared.logging import info


def make_live_broker(settings: Settings, logger: logging.Logger) -> CcxtBroker:
    creds = load_credentials()
    broker = CcxtBroker(settings.exchange_id, api_key=creds.api_key, secret=creds.api_secret,
                        base_url=venue_url(settings), testnet=settings.testnet, logger=logger)
    if not broker.exchange.has.get("createMarketBuyOrderWithCost"):
        # What a buy spends must be exact (shared/config.py LIVE_VENUES): checked on the ccxt in use, too.
        raise ConfigError(f"setting exchange_id (env AURA_EXCHANGE_ID): live trading (AURA_DRY_RUN=false) refused: "
                          f"ccxt cannot place a market buy by quote amount on {settings.exchange_id!r} "
                          f"(createMarketBuyOrderWithCost); keep AURA_DRY_RUN=true")
    info(logger, "BOOT", "live broker configured", exchange=settings.exchange_id, testnet=settings.testnet,
         base_url=venue_url(settings) or "default")
    return broker
