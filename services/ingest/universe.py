"""Tradable universe: the exchange's spot markets in one quote currency, with their 24h quote volume.

Refreshed at most once a day (``load_markets`` + ``fetch_tickers`` through ccxt; the file
``<cache>/<exchange>/universe.json`` is the memory between runs).  A symbol that was in the universe and is
now gone or no longer trading is **kept and marked delisted** (with the time it was first seen so): the
backtests need to know it existed, and a later relisting clears the mark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from services.ingest import cache
from services.ingest.providers.ccxt_tail import make_exchange
from services.ingest.sync_config import IngestConfig
from shared.logging import info, warn

log = logging.getLogger("aura.ingest.universe")
DAY_MS = 86_400_000
# Bases pegged to a currency: stablecoins and fiat.  They are among the largest USDT pairs by volume, have no
# momentum to rotate into and sit on their moving average, so in the ranked universe they would take slots from
# coins and blur the regime's breadth.  Left out of the ranking (a pair named in AURA_SYMBOLS is still traded).
PEGGED_BASES = frozenset({"USDC", "FDUSD", "TUSD", "BUSD", "USDP", "PAX", "DAI", "PYUSD", "USDD", "USDE", "USD1",
                          "AEUR", "EURI", "EUR", "GBP", "AUD", "BRL", "TRY", "RUB", "UAH", "NGN", "ZAR", "JPY",
                          "IDRT", "BIDR", "BVND"})


class UniverseError(RuntimeError):
    """No universe could be loaded and there is no previous one to fall back on."""


@dataclass(frozen=True)
class UniverseEntry:
    symbol: str  # unified, 'BTC/USDT'
    base: str
    quote: str
    active: bool  # trading at the last refresh
    delisted: bool  # was listed before, gone or halted now
    quote_volume_24h: float | None
    first_seen_ms: int
    last_seen_ms: int  # last refresh that saw it trading
    delisted_ms: int | None = None


@dataclass
class Universe:
    exchange: str
    quote: str
    refreshed_ms: int
    entries: dict[str, UniverseEntry] = field(default_factory=dict)

    def active(self, min_quote_volume: float = 0.0, top: int | None = None,
               exclude_bases: frozenset[str] = frozenset()) -> list[str]:
        """Trading symbols by 24h quote volume, largest first (ties by name), without ``exclude_bases``."""
        live = [e for e in self.entries.values() if e.active and (e.quote_volume_24h or 0.0) >= min_quote_volume
                and e.base not in exclude_bases]
        live.sort(key=lambda e: (-(e.quote_volume_24h or 0.0), e.symbol))
        return [e.symbol for e in live[:top]]

    def delisted(self) -> list[str]:
        return sorted(e.symbol for e in self.entries.values() if e.delisted)

    def to_json(self) -> str:
        return json.dumps(
            {"exchange": self.exchange, "quote": self.quote, "refreshed_ms": self.refreshed_ms,
             "entries": [asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.symbol)]},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Universe:
        doc = json.loads(text)
        entries = {e["symbol"]: UniverseEntry(**e) for e in doc["entries"]}
        return cls(doc["exchange"], doc["quote"], int(doc["refreshed_ms"]), entries)


def merge_universe(
    previous: Universe | None,
    markets: Iterable[Mapping[str, Any]],
    tickers: Mapping[str, Mapping[str, Any]],
    *,
    exchange: str,
    quote: str,
    now_ms: int,
) -> Universe:
    """New universe from ccxt markets/tickers and the previous one.  Pure."""
    old = previous.entries if previous else {}
    out: dict[str, UniverseEntry] = {}
    for m in markets:
        if not m.get("spot") or m.get("quote") != quote:
            continue
        sym = str(m["symbol"])
        active = m.get("active") is not False  # ccxt: None means "unknown", which Binance never sends
        vol = (tickers.get(sym) or {}).get("quoteVolume")
        prev = old.get(sym)
        first = prev.first_seen_ms if prev else now_ms
        if active:
            out[sym] = UniverseEntry(sym, str(m["base"]), quote, True, False, _num(vol), first, now_ms)
        else:
            # Listed but halted/"BREAK": Binance's state for a delisted pair.
            out[sym] = UniverseEntry(sym, str(m["base"]), quote, False, True, _num(vol), first,
                                     prev.last_seen_ms if prev else now_ms,
                                     prev.delisted_ms if prev and prev.delisted_ms else now_ms)
    for sym, prev in old.items():
        if sym not in out:
            out[sym] = replace(prev, active=False, delisted=True, quote_volume_24h=None,
                               delisted_ms=prev.delisted_ms or now_ms)
    return Universe(exchange, quote, now_ms, dict(sorted(out.items())))


def universe_path(cache_root: Path, exchange: str) -> Path:
    return Path(cache_root) / exchange / "universe.json"


def load_universe(cache_root: Path, exchange: str) -> Universe | None:
    path = universe_path(cache_root, exchange)
    try:
        return Universe.from_json(path.read_text()) if path.exists() else None
    except (ValueError, KeyError, TypeError):
        return None


def refresh_universe(
    exchange: str,
    config: Any,
    now_ms: int,
    *,
    quote: str = "USDT",
    force: bool = False,
    max_age_ms: int = DAY_MS,
    client: Any = None,
    keep_previous: bool = True,
) -> Universe:
    """The universe, refreshed from the exchange if the stored one is older than ``max_age_ms``.

    On a network failure, or tickers without a 24h volume for any pair, the previous universe is returned
    unchanged (its ``refreshed_ms`` tells its age); with no previous one, or with ``keep_previous`` false (the
    live ingest, which says so and tries again: services/ingest/venue.py), :class:`UniverseError`.  ``client``: a
    ccxt client to ask instead of a new one (the ingest service passes the one it has just loaded the markets
    with, so they are read once, not twice).
    """
    cfg = IngestConfig.coerce(config)
    previous = load_universe(cfg.cache_root, exchange)
    # A stored universe dated after now (a home reused against a venue whose clock is earlier: a rehearsal from an
    # earlier date) is no newer than any: kept, it would rank on volumes from the future and never be read again.
    if previous is not None and not force and previous.quote == quote and \
            0 <= now_ms - previous.refreshed_ms < max_age_ms:
        return previous
    ex = client if client is not None else make_exchange(
        exchange, api_url=cfg.api_urls.get(exchange), rate_limit_ms=cfg.ccxt_rate_limit_ms,
        timeout_s=cfg.http_timeout_s)
    import ccxt  # already imported by make_exchange; here for the exception types

    try:
        markets = ex.load_markets()
        tickers = ex.fetch_tickers()
        # An answer without volumes ranked every pair as unknown: alphabetically, 1INCH first (an audit).
        if not any(_num((t or {}).get("quoteVolume")) for t in tickers.values()):
            raise ccxt.ExchangeError(f"no 24h quote volume in {len(tickers)} tickers")
    except ccxt.BaseError as exc:
        if previous is None or not keep_previous:
            raise UniverseError(f"{exchange}: cannot rank the pairs by 24h volume: {type(exc).__name__}: "
                                f"{exc}"[:300]) from exc
        warn(log, "UNIVERSE_STALE", f"{exchange}: refresh failed ({type(exc).__name__}), keeping the previous one",
             refreshed_ms=previous.refreshed_ms)
        return previous
    universe = merge_universe(previous, markets.values(), tickers, exchange=exchange, quote=quote, now_ms=now_ms)
    path = universe_path(cfg.cache_root, exchange)
    data = universe.to_json().encode()
    cache.atomic_write_bytes(path, lambda fh: fh.write(data))
    info(log, "UNIVERSE", f"{exchange}: {len(universe.active())} active, {len(universe.delisted())} delisted",
         active=len(universe.active()), delisted=universe.delisted())
    return universe


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
