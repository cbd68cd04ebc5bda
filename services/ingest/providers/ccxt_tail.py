"""Tail feed: the real ccxt client's ``fetch_ohlcv`` against one exchange's REST API.

Used for what the archive does not have yet (today, yesterday) and to confirm exchange gaps.  Paginated
with ``since``/``limit`` (and ``until``), rate-limited by ccxt (``enableRateLimit``).  The base URL can be
pointed anywhere (the venue simulator) by rewriting the host of every URL in ``exchange.urls['api']``.

For Binance, markets are loaded from ``/api/v3/exchangeInfo`` only (spot, no currencies, no margin lists):
those are the only public calls needed for ``fetch_ohlcv`` and they need no API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl

from services.ingest.coverage import coalesce, normalize
from services.ingest.providers.base import (
    CANDLE_SCHEMA,
    Breaker,
    FetchRequest,
    FetchResult,
    Range,
    SerialFetch,
    close_cutoff,
    empty_candles,
    unified_symbol,
)

if TYPE_CHECKING:
    import ccxt


# How long after a candle's close its absence from a klines answer is believed (see ``_settled_end``).
KLINE_SETTLE_MS = 120_000


def _ccxt() -> Any:
    # Imported on first use: ccxt takes seconds to import, and a sync that finds the cache fresh never needs it.
    import ccxt

    return ccxt


def rewrite_api_urls(api: Any, base_url: str) -> Any:
    """Same structure as ccxt's ``urls['api']`` with every URL's scheme and host replaced by ``base_url``'s.

    A path on ``base_url`` is prefixed to each URL's own path ('http://h:1/x' + '/api/v3' -> 'http://h:1/x/api/v3').
    """
    target = urlsplit(base_url.rstrip("/"))
    if isinstance(api, str):
        parts = urlsplit(api)
        if not parts.scheme:
            return api
        return urlunsplit((target.scheme, target.netloc, target.path + parts.path, parts.query, parts.fragment))
    if isinstance(api, dict):
        return {k: rewrite_api_urls(v, base_url) for k, v in api.items()}
    return api


def make_exchange(
    exchange_id: str, *, api_url: str | None = None, rate_limit_ms: int | None = None, timeout_s: float = 20.0
) -> ccxt.Exchange:
    """A public (key-less) ccxt client with rate limiting on, optionally pointed at ``api_url``."""
    ccxt = _ccxt()
    cls = getattr(ccxt, exchange_id, None)
    if cls is None:
        raise ValueError(f"ccxt has no exchange {exchange_id!r}")
    ex: ccxt.Exchange = cls({"enableRateLimit": True, "timeout": int(timeout_s * 1000)})
    if rate_limit_ms is not None:
        ex.rateLimit = rate_limit_ms
    if api_url:
        ex.urls["api"] = rewrite_api_urls(ex.urls["api"], api_url)
    if exchange_id.startswith("binance"):
        # Spot markets only: load_markets then needs /api/v3/exchangeInfo and nothing private.
        ex.options["fetchMarkets"] = {"types": ["spot"], "loadAllOptions": False}
        ex.options["fetchCurrencies"] = False
        ex.options["fetchMargins"] = False
    return ex


# A symbol missing from the market list makes the list be read again, at most this often (by the fetch clock).
MISSING_RELOAD_MS = 10 * 60_000

class CcxtTailProvider(SerialFetch):
    """One exchange through ccxt.  Authoritative only for its own exchange's cache."""

    def __init__(
        self,
        exchange_id: str,
        *,
        api_url: str | None = None,
        rate_limit_ms: int | None = None,
        timeout_s: float = 20.0,
        page_limit: int | None = None,
        cooldown_s: float = 60.0,
    ) -> None:
        self.exchange_id = exchange_id
        self.breaker = Breaker(cooldown_s)
        self.name = f"ccxt:{exchange_id}"
        self.api_url = api_url
        self.rate_limit_ms = rate_limit_ms
        self.timeout_s = timeout_s
        self._page_limit = page_limit
        self._ex: ccxt.Exchange | None = None
        self._markets_loaded = False
        self._markets_at_ms: int | None = None  # the fetch clock's time of the last market list read (None: unknown)
        self._carried = 0  # requests made outside a fetch (``listed``): reported with the next fetch's
        SerialFetch.__init__(self)  # a ccxt client is not meant to be shared between threads

    # -- Provider interface
    def authoritative(self, exchange: str) -> bool:
        return exchange == self.exchange_id

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        return timeframe in (self._exchange().timeframes or {})

    def close(self) -> None:
        self._ex = None
        self._markets_loaded = False
        self._markets_at_ms = None

    def listed(self) -> tuple[frozenset[str] | None, str]:
        """(the unified symbols the exchange's market list holds, '') or (None, why it cannot be read: down,
        offline, its circuit open).  The list is loaded once and kept for the fetches that follow, so asking
        first costs no second request.  Binance's list keeps delisted pairs (status BREAK) while it describes
        them, so their history is still asked for."""
        with self._lock:
            if self.breaker.open:
                return None, f"{self.name} unavailable ({self.breaker.reason})"
            before = self._requests
            why = self._load_markets()
            self._carried += self._requests - before
            if why:
                return None, why
            return frozenset(self._exchange().markets or {}), ""

    # -- internals
    def _exchange(self) -> ccxt.Exchange:
        if self._ex is None:
            ex = make_exchange(self.exchange_id, api_url=self.api_url, rate_limit_ms=self.rate_limit_ms,
                               timeout_s=self.timeout_s)
            original = ex.fetch

            def counted(*args: Any, **kwargs: Any) -> Any:
                # Every HTTP call ccxt makes goes through Exchange.fetch: count them all.
                self._requests += 1
                return original(*args, **kwargs)

            ex.fetch = counted  # type: ignore[method-assign]
            self._ex = ex
        return self._ex

    def page_limit(self) -> int:
        if self._page_limit:
            return self._page_limit
        features = (self._exchange().features or {}).get("spot") or {}
        return int((features.get("fetchOHLCV") or {}).get("limit") or 500)

    def _load_markets(self, reload: bool = False) -> str:
        """Load the market list once (``reload``: again); '' when it is there, else why not (a network failure opens
        the circuit)."""
        if self._markets_loaded and not reload:
            return ""
        ccxt = _ccxt()
        try:
            self._exchange().load_markets(reload)
        except ccxt.BaseError as exc:
            if isinstance(exc, ccxt.NetworkError):
                self.breaker.trip(type(exc).__name__)
            return f"load_markets: {type(exc).__name__}"
        self._markets_loaded = True
        return ""

    def _fetch(self, request: FetchRequest) -> FetchResult:
        ccxt = _ccxt()
        self._requests += self._carried
        self._carried = 0
        result = FetchResult(provider=self.name)
        ranges = normalize(list(request.ranges))
        if self.breaker.open:
            result.failed = [(s, e, f"not asked: {self.name} unavailable ({self.breaker.reason})") for s, e in ranges]
            return result
        ex = self._exchange()
        why = self._load_markets()
        if why:
            result.failed = [(s, e, why) for s, e in ranges]
            return result
        symbol = unified_symbol(request.symbol)
        if self._markets_at_ms is None:
            self._markets_at_ms = request.now_ms
        if symbol not in ex.markets and request.now_ms - self._markets_at_ms >= MISSING_RELOAD_MS:
            # Listed since the list was read (the universe, read again daily, may hold it already): asked again,
            # at most every MISSING_RELOAD_MS.  Read once for good, a new listing's bars never came and every
            # cycle was stale until ingest restarted (found by an audit).
            self._markets_at_ms = request.now_ms
            why = self._load_markets(reload=True)
            if why:
                result.failed = [(s, e, why) for s, e in ranges]
                return result
        if symbol not in ex.markets:
            return result  # not listed on this exchange: unavailable, not a failure
        iv = request.interval_ms
        limit = self.page_limit()
        rows: list[list[Any]] = []
        answered: list[Range] = []
        # Small holes close together (exchange outages) are asked in one page instead of one page each.
        padded = normalize([(max(0, s - request.lookback_ms), e) for s, e in ranges])
        pending = coalesce(padded, max_span=limit * iv)
        for i, (start, end) in enumerate(pending):
            since = start
            try:
                while since < end:
                    # The range reaching the newest closed candle is asked open-ended, like a live tail: the
                    # exchange then also sends the forming candle, which the caller drops (never stored).
                    params = {} if end + iv > close_cutoff(request.now_ms) else {"until": end - 1}
                    page = ex.fetch_ohlcv(symbol, request.timeframe, since=since, limit=limit, params=params)
                    rows.extend(page)
                    inside = [r[0] for r in page if since <= r[0] < end]
                    if len(page) < limit or not inside:
                        # A short page means the exchange has nothing more up to ``until``; believed only as
                        # far as it can be: see ``_settled_end``.
                        reach = _settled_end(since, end, page, iv, request.now_ms)
                        if reach > since:
                            answered.append((since, reach))
                        break
                    nxt = max(inside) + iv
                    answered.append((since, nxt))
                    if nxt <= since:
                        break
                    since = nxt
            except ccxt.BadSymbol:
                break
            except ccxt.BaseError as exc:
                reason = f"{type(exc).__name__}"
                if isinstance(exc, ccxt.NetworkError):  # down, timeouts, rate limits (DDoSProtection, 429)
                    self.breaker.trip(reason)
                # Down or rate limited: do not hammer it with the remaining ranges either.
                result.failed = [(since, end, reason)] + [(s, e, reason) for s, e in pending[i + 1:]]
                break
        result.answered = normalize(answered)
        result.frame = _to_frame(rows)
        return result


def _settled_end(since: int, end: int, page: list[list[Any]], iv: int, now_ms: int) -> int:
    """How far a short page's "nothing more" can be believed: over every candle that closed ``KLINE_SETTLE_MS``
    or more ago, and up to the newest candle the page holds.  An exchange answers a moment behind its close, so a
    just-closed candle missing from the page is *not yet published*, not absent: taken as an answer it became a
    confirmed gap that was never asked again, and the symbol lacked its newest bar for good.  Still missing two
    minutes after its close (a halted or delisted pair), it is absent, and the gap is confirmed."""
    settled = (now_ms - KLINE_SETTLE_MS) // iv * iv  # the end of the newest slot that closed that long ago
    newest = max((int(r[0]) for r in page), default=since - iv)
    return max(since, min(end, max(newest + iv, settled)))


def _to_frame(rows: list[list[Any]]) -> pl.DataFrame:
    if not rows:
        return empty_candles()
    return pl.DataFrame(
        {
            "timestamp": [int(r[0]) for r in rows],
            "open": [_f(r[1]) for r in rows],
            "high": [_f(r[2]) for r in rows],
            "low": [_f(r[3]) for r in rows],
            "close": [_f(r[4]) for r in rows],
            "volume": [_f(r[5]) for r in rows],
        },
        schema=CANDLE_SCHEMA,
    )


def _f(value: Any) -> float:
    return float("nan") if value is None else float(value)
