"""How AURA builds a ccxt client (spot only, the venue's testnet on request, every host pointed at the simulator
or a proxy when a base URL is given) and reads the exchange's error codes out of its exceptions.  The broker
(ccxt_broker.py), risk's public price reads and the crash trials build theirs here."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import ccxt
import ccxt.async_support as ccxt_async

from shared.config import Settings


def _rewrite(urls: Any, base_url: str) -> Any:
    base = urlsplit(base_url)
    if isinstance(urls, str):
        parts = urlsplit(urls)
        return parts._replace(scheme=base.scheme, netloc=base.netloc).geturl() if parts.netloc else urls
    if isinstance(urls, dict):
        return {k: _rewrite(v, base_url) for k, v in urls.items()}
    return urls


def make_ccxt_exchange(exchange_id: str = "binance", *, api_key: str = "", secret: str = "",
                       base_url: str | None = None, async_: bool = True, timeout_ms: int = 10_000,
                       enable_rate_limit: bool = True, adjust_for_time_difference: bool = True,
                       testnet: bool = False, options: dict[str, Any] | None = None) -> Any:
    """A spot-only ccxt client.  ``testnet``: the exchange's testnet URLs (ccxt's sandbox mode; an exchange
    without one is an error, never a silent mainnet).  ``base_url`` then points every host of that URL set at
    the simulator (or a proxy)."""
    module = ccxt_async if async_ else ccxt
    cls = getattr(module, exchange_id, None)
    if cls is None:
        raise ValueError(f"ccxt has no exchange {exchange_id!r}")
    opts: dict[str, Any] = {
        "defaultType": "spot",
        "fetchMarkets": {"types": ["spot"]},  # no futures/options exchangeInfo calls
        "fetchCurrencies": False,  # would hit sapi/capital endpoints a spot key may not reach
        "fetchMargins": False,
        "adjustForTimeDifference": adjust_for_time_difference,  # a drifting clock otherwise means -1021
        **(options or {}),
    }
    exchange = cls({"apiKey": api_key, "secret": secret, "enableRateLimit": enable_rate_limit,
                    "timeout": timeout_ms, "options": opts})
    if testnet:
        exchange.set_sandbox_mode(True)
    if base_url:
        exchange.urls["api"] = _rewrite(exchange.urls["api"], base_url.rstrip("/"))
    return exchange


def venue_url(settings: Settings) -> str | None:
    """The REST base of the venue the settings trade on: with ``testnet`` the testnet's (exchange_testnet_url,
    else ccxt's sandbox hosts), never exchange_api_url, which names the main venue; None = ccxt's own hosts."""
    return (settings.exchange_testnet_url if settings.testnet else settings.exchange_api_url) or None


def make_ccxt_binance(base_url: str | None, api_key: str, secret: str, async_: bool = True, **kwargs: Any) -> Any:
    return make_ccxt_exchange("binance", api_key=api_key, secret=secret, base_url=base_url, async_=async_, **kwargs)


_CODE_RE = re.compile(r'"code"\s*:\s*(-?\d+)')
# Binance answers these before anything reaches the matching engine: nothing was done, retrying is safe.
AUTH_CODES = {-1002, -1022, -2014, -2015}
UNKNOWN_OUTCOME_CODES = {-1000, -1001, -1006, -1007, -1008, -1004}  # "execution status unknown" family
_NOT_FOUND_CODES = {-2011, -2013}


def exchange_code(exc: BaseException) -> int | None:
    """The exchange's own error code, from the response body ccxt quotes in the message."""
    match = _CODE_RE.search(str(exc))
    return int(match.group(1)) if match else None


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ccxt.OrderNotFound) or exchange_code(exc) in _NOT_FOUND_CODES
