"""What a sync is configured with and what it reports: ``IngestConfig`` (from ``AURA_*`` variables), the provider
chain it builds, and the per-symbol and whole ``SyncReport`` (sync.py fills them)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.ingest.coverage import Coverage, Gap, subtract
from services.ingest.providers.base import Provider, Range
from services.ingest.providers.binance_archive import BinanceArchiveProvider
from services.ingest.providers.ccxt_tail import CcxtTailProvider
from services.ingest.providers.coingecko import CoinGeckoProvider

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
DEFAULT_BINANCE_API_URL = "https://api.binance.com"
DEFAULT_COINGECKO_URL = "https://api.coingecko.com"
_API_URL_ENV = re.compile(r"^AURA_([A-Z0-9]+)_API_URL$")


@dataclass(frozen=True)
class IngestConfig:
    cache_root: Path
    archive_url: str = DEFAULT_ARCHIVE_URL
    coingecko_url: str = DEFAULT_COINGECKO_URL
    api_urls: Mapping[str, str] = field(default_factory=dict)  # ccxt exchange id -> REST base URL override
    tail_exchanges: tuple[str, ...] = ()  # more ccxt exchanges asked after the cache's own exchange
    providers: tuple[str, ...] = ("archive", "tail", "coingecko")  # provider kinds, in priority order
    lookback_bars: int = 10  # fetch this much before each missing range: indicator warm-up, edge cross-check
    archive_workers: int = 8
    http_timeout_s: float = 20.0
    ccxt_rate_limit_ms: int | None = None  # None: the exchange's own ccxt rateLimit
    ccxt_page_limit: int | None = None  # None: the exchange's own maximum page size
    coingecko_min_interval_s: float = 2.5  # the free tier allows ~30 calls per minute
    coingecko_max_retries: int = 3
    max_retry_after_s: float = 60.0
    provider_cooldown_s: float = 60.0  # a provider that is down or limiting us is left alone this long
    tol_same_venue: float = 1e-9  # archive vs API of the same exchange: the same numbers, bit for bit
    tol_other_venue: float = 0.02  # another exchange or CoinGecko's USD aggregate: close, not equal
    # How long fallback candles are asked again from the exchange's own sources: ample for an outage to end
    # and the archive to publish its days, short enough that a slot the exchange never serves stops costing
    # requests.  Past it they are kept as they are.
    provisional_days: float = 7.0
    jump_flag_ratio: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, home: str | None = None, **overrides: Any
    ) -> IngestConfig:
        """Config from ``AURA_*`` variables (see the module docs of cli.py for the list)."""
        env = dict(os.environ if env is None else env)
        root = Path(home or env.get("AURA_HOME") or "./var").expanduser().resolve() / "cache"
        api_urls = {m.group(1).lower(): v for k, v in env.items() if (m := _API_URL_ENV.match(k)) and v}
        kwargs: dict[str, Any] = {
            "cache_root": root,
            "archive_url": env.get("AURA_BINANCE_ARCHIVE_URL") or DEFAULT_ARCHIVE_URL,
            "coingecko_url": env.get("AURA_COINGECKO_URL") or DEFAULT_COINGECKO_URL,
            "api_urls": api_urls,
        }
        if env.get("AURA_INGEST_TAIL_EXCHANGES"):
            kwargs["tail_exchanges"] = _csv(env["AURA_INGEST_TAIL_EXCHANGES"])
        if env.get("AURA_INGEST_PROVIDERS"):
            kwargs["providers"] = _csv(env["AURA_INGEST_PROVIDERS"])
        for key, name, kind in (
            ("AURA_INGEST_LOOKBACK_BARS", "lookback_bars", int),
            ("AURA_INGEST_CCXT_RATE_LIMIT_MS", "ccxt_rate_limit_ms", int),
            ("AURA_COINGECKO_MIN_INTERVAL_S", "coingecko_min_interval_s", float),
        ):
            if env.get(key):
                kwargs[name] = kind(env[key])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def coerce(cls, config: Any) -> IngestConfig:
        """Accept an IngestConfig, or anything settings-like with a ``home`` (shared.config.Settings)."""
        if isinstance(config, IngestConfig):
            return config
        home = getattr(config, "home", None)
        if home is None:
            raise TypeError("config must be an IngestConfig or have a 'home' attribute")
        return cls.from_env(home=str(home))


@dataclass
class SymbolReport:
    symbol: str
    window: Range | None = None  # [first, last + interval) of the candles asked for
    rows: int = 0  # rows in the cache file after the sync
    rows_added: int = 0
    rows_replaced: int = 0  # provisional (fallback) candles replaced by the exchange's own
    first_ms: int | None = None
    last_ms: int | None = None
    added_by_provider: dict[str, int] = field(default_factory=dict)  # incl. provisional candles replaced
    ranges_by_provider: dict[str, list[Range]] = field(default_factory=dict)  # whole cache file
    gaps: list[Gap] = field(default_factory=list)  # inside the window: confirmed and pending
    requests: dict[str, int] = field(default_factory=dict)
    flags: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"coingecko": ["no_volume"]}
    issues: dict[str, int] = field(default_factory=dict)  # validation counters ("reject.nan_price": 2)
    disagreements: int = 0
    forming_dropped: int = 0
    complete: bool = False
    error: str | None = None
    # fetch_s: wall time inside providers (network + parsing); parse_s: of which turning bytes into candles;
    # merge_s: everything else (read cache, validate, merge, cross-check, write).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())

    @property
    def pending_gaps(self) -> list[Gap]:
        return [g for g in self.gaps if not g.confirmed]

    def finish(self, cov: Coverage, window: list[Range]) -> None:
        """Fill in what the coverage map says after the sync: rows, providers, gaps inside the window, complete."""
        self.rows = cov.rows
        self.first_ms, self.last_ms = cov.first_ms, cov.last_ms
        self.ranges_by_provider = cov.provider_ranges()
        self.flags = {k: list(v) for k, v in cov.flags.items() if k in self.ranges_by_provider}
        self.gaps = [
            Gap(max(g.start, window[0][0]), min(g.end, window[0][1]), g.confirmed, g.by)
            for g in cov.gaps
            if window and g.start < window[0][1] and g.end > window[0][0]
        ]
        self.complete = self.error is None and not subtract(window, cov.resolved())


@dataclass
class SyncReport:
    exchange: str
    timeframe: str
    since_ms: int
    until_ms: int | None
    now_ms: int
    last_closed_ms: int
    symbols: dict[str, SymbolReport] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.symbols.values())

    @property
    def requests(self) -> int:
        return sum(r.request_count for r in self.symbols.values())

    @property
    def rows_added(self) -> int:
        return sum(r.rows_added for r in self.symbols.values())

    def timing(self, key: str) -> float:
        return sum(r.timings.get(key, 0.0) for r in self.symbols.values())


def build_providers(config: IngestConfig, exchange: str) -> list[Provider]:
    """The provider chain for ``exchange``'s cache, in priority order (no network use here)."""
    chain: list[Provider] = []
    for kind in config.providers:
        if kind == "archive":
            if exchange == "binance":
                chain.append(BinanceArchiveProvider(config.archive_url, workers=config.archive_workers,
                                                    timeout_s=config.http_timeout_s,
                                                    cooldown_s=config.provider_cooldown_s))
        elif kind == "tail":
            for ex_id in dict.fromkeys((exchange, *config.tail_exchanges)):
                chain.append(CcxtTailProvider(ex_id, api_url=config.api_urls.get(ex_id),
                                              rate_limit_ms=config.ccxt_rate_limit_ms,
                                              timeout_s=config.http_timeout_s, page_limit=config.ccxt_page_limit,
                                              cooldown_s=config.provider_cooldown_s))
        elif kind == "coingecko":
            chain.append(CoinGeckoProvider(config.coingecko_url, timeout_s=config.http_timeout_s,
                                           min_interval_s=config.coingecko_min_interval_s,
                                           max_retries=config.coingecko_max_retries,
                                           max_retry_after_s=config.max_retry_after_s, sleep=config.sleep,
                                           cooldown_s=config.provider_cooldown_s))
        else:
            raise ValueError(f"unknown provider kind {kind!r} (expected archive, tail, coingecko)")
    return chain


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())
