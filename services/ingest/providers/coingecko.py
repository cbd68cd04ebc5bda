"""Last-resort fallback: CoinGecko's public OHLC endpoint.

``GET /api/v3/coins/{id}/ohlc?vs_currency=usd&days=N`` returns ``[[t, open, high, low, close], ...]`` where
``t`` is the candle's *close* time and the candle size is automatic: 30 minutes for 1-2 days, 4 hours for
3-30 days, 4 days beyond.  So this provider can honestly serve only:

* ``4h`` candles (days 7/14/30, the last 30 days), and
* ``1d`` candles built from six complete 4h candles of the same UTC day (a day missing a piece is skipped,
  never patched).

Candles closed less than 35 minutes before ``now`` are not used (CoinGecko publishes a completed UTC day at
00:35; its newest point is a moving one).

It has **no volume**: volume is NaN and the result carries the ``no_volume`` flag, which the coverage map
records for every range it supplied.  Prices are USD aggregated across venues, so CoinGecko is never
authoritative: it can fill a hole the exchange sources could not answer, but never confirm a gap.

Rate limits: a minimum interval between calls, and on HTTP 429 a wait of ``Retry-After`` seconds (capped)
before retrying, a few times, then the range is reported failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import httpx
import numpy as np
import polars as pl

from services.ingest.coverage import intersect, normalize
from services.ingest.providers.base import (
    CANDLE_SCHEMA,
    Breaker,
    FetchRequest,
    FetchResult,
    SerialFetch,
    empty_candles,
    split_symbol,
)
from shared.logging import warn

log = logging.getLogger("aura.ingest.coingecko")

_H4 = 4 * 3_600_000
_DAY = 86_400_000
_DAYS_CHOICES = (7, 14, 30)  # all inside CoinGecko's 4-hour granularity band (3-30 days)
_USD_QUOTES = {"USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD"}

# Binance base asset -> CoinGecko coin id, for the pairs AURA trades (ids from CoinGecko's coin pages);
# anything else is looked up in /api/v3/coins/list and used only if the ticker is unambiguous.
COIN_IDS: dict[str, str] = {
    "AAVE": "aave", "ADA": "cardano", "APT": "aptos", "ARB": "arbitrum", "ATOM": "cosmos", "AVAX": "avalanche-2",
    "BNB": "binancecoin", "BONK": "bonk", "BTC": "bitcoin", "DOGE": "dogecoin", "DOT": "polkadot",
    "ETC": "ethereum-classic", "ETH": "ethereum", "FET": "fetch-ai", "FIL": "filecoin", "FLOKI": "floki",
    "FTM": "fantom", "GRT": "the-graph", "HBAR": "hedera-hashgraph", "ICP": "internet-computer",
    "INJ": "injective-protocol", "LINK": "chainlink", "LTC": "litecoin", "MATIC": "matic-network", "MKR": "maker",
    "NEAR": "near", "OM": "mantra-dao", "OP": "optimism", "PEPE": "pepe", "PYTH": "pyth-network",
    "SHIB": "shiba-inu", "SOL": "solana", "STX": "blockstack", "SUI": "sui", "THETA": "theta-token",
    "TIA": "celestia", "TRX": "tron", "UNI": "uniswap", "WIF": "dogwifcoin", "WLD": "worldcoin-wld", "XRP": "ripple",
}


def ohlc_to_candles(rows: list[list[float]], timeframe: str, settled_before_ms: int | None = None) -> pl.DataFrame:
    """CoinGecko 4h OHLC rows (close-time stamped) -> candles by open time, for ``4h`` or ``1d``. Pure.

    Rows stamped after ``settled_before_ms`` are ignored: CoinGecko refreshes every 15 minutes and publishes
    a completed UTC day 35 minutes after midnight, so a candle that only just closed may not be final yet.

    A time CoinGecko sends twice stays twice (a ``1d`` day is then built once per copy of its pieces): which
    copy is right is not ours to guess, so the validation every provider's rows go through sees both, flags
    identical copies and rejects conflicting ones (tagged line, counter, asked elsewhere), never a silent pick.
    """
    arr = ohlc_rows(rows)
    if len(arr) == 0:
        return empty_candles()
    if settled_before_ms is not None:
        arr = arr[arr[:, 0] <= settled_before_ms]
    open_ts = arr[:, 0].astype(np.int64) - _H4
    aligned = open_ts % _H4 == 0  # the newest row can be a partial candle stamped "now": not a candle
    arr, open_ts = arr[aligned], open_ts[aligned]
    order = np.argsort(open_ts, kind="stable")
    arr, open_ts = arr[order], open_ts[order]
    if timeframe == "4h":
        return _frame(open_ts, arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4])
    if timeframe != "1d":
        raise ValueError(f"CoinGecko cannot build {timeframe} candles")
    day = open_ts - open_ts % _DAY
    out_ts, o, h, lo, c = [], [], [], [], []
    for d in np.unique(day):
        at = np.flatnonzero(day == d)
        slots, inverse, copies = np.unique(open_ts[at], return_inverse=True, return_counts=True)
        if len(slots) != 6:  # six distinct 4h pieces make a complete UTC day; a day missing one is skipped
            continue
        for k in range(int(copies.max())):
            # The k-th copy of each piece (its last one when it has fewer): every copy sent ends up in a day.
            piece = arr[[at[inverse == j][min(k, copies[j] - 1)] for j in range(6)]]
            out_ts.append(int(d))
            o.append(piece[0, 1])
            h.append(piece[:, 2].max())
            lo.append(piece[:, 3].min())
            c.append(piece[-1, 4])
    return _frame(np.array(out_ts, dtype=np.int64), np.array(o), np.array(h), np.array(lo), np.array(c))


def ohlc_rows(doc: object) -> np.ndarray:
    """CoinGecko's OHLC body as an (n, 5) float array; ValueError for any other shape.

    A 200 can still carry something else (an error object from a proxy, a changed API): that is CoinGecko
    failing, to be reported as such, never an exception that takes the whole symbol's sync down.
    """
    if not isinstance(doc, list):
        raise ValueError(f"OHLC answer is a {type(doc).__name__}, not a list of rows")
    if not doc:
        return np.empty((0, 5))
    try:
        arr = np.asarray(doc, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"OHLC rows are not numbers: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"OHLC rows have shape {arr.shape}, expected (n, 5)")
    if not np.isfinite(arr[:, 0]).all():
        raise ValueError("OHLC row without a usable timestamp")
    return arr


def _frame(ts: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {"timestamp": ts, "open": o, "high": h, "low": lo, "close": c, "volume": np.full(len(ts), np.nan)},
        schema=CANDLE_SCHEMA,
    )


class RateLimited(Exception):
    pass


class CoinGeckoProvider(SerialFetch):
    name = "coingecko"

    def __init__(
        self,
        base_url: str,
        *,
        coin_ids: Mapping[str, str] | None = None,
        timeout_s: float = 20.0,
        min_interval_s: float = 2.5,
        max_retries: int = 3,
        max_retry_after_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        settle_ms: int = 35 * 60_000,
        cooldown_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.coin_ids = {**COIN_IDS, **(coin_ids or {})}
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.sleep = sleep
        self.clock = clock
        self.settle_ms = settle_ms
        self.breaker = Breaker(cooldown_s, clock)
        self._client: httpx.Client | None = None
        self._coins_list: list[dict[str, str]] | None = None
        self._last_call = -1e18
        SerialFetch.__init__(self)

    # -- Provider interface
    def authoritative(self, exchange: str) -> bool:
        return False

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        return timeframe in ("4h", "1d")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- internals
    def _fetch(self, request: FetchRequest) -> FetchResult:
        result = FetchResult(provider=self.name, flags=frozenset({"no_volume"}))
        window = (request.now_ms - _DAYS_CHOICES[-1] * _DAY, request.now_ms)
        wanted = intersect(normalize(list(request.ranges)), [window])
        if not wanted:
            return result  # older than CoinGecko's 4-hour window: unavailable
        if self.breaker.open:
            result.failed = [(s, e, f"not asked: coingecko unavailable ({self.breaker.reason})") for s, e in wanted]
            return result
        base, quote = split_symbol(request.symbol)
        vs = "usd" if quote in _USD_QUOTES else quote.lower()
        # Ask for enough days to cover the oldest wanted candle (a 1d candle needs its whole day).
        need_days = (request.now_ms - wanted[0][0]) / _DAY
        days = next(d for d in _DAYS_CHOICES if d >= need_days) if need_days <= _DAYS_CHOICES[-1] else 30
        try:
            coin = self._coin_id(base)
            if coin is None:
                return result
            resp = self._get(f"/api/v3/coins/{coin}/ohlc", {"vs_currency": vs, "days": str(days)})
            if resp.status_code == 404:
                return result
            if resp.status_code != 200:
                if resp.status_code >= 500:
                    self.breaker.trip(f"http {resp.status_code}")
                result.failed = [(s, e, f"http {resp.status_code}") for s, e in wanted]
                return result
            result.frame = ohlc_to_candles(resp.json(), request.timeframe, request.now_ms - self.settle_ms)
        except RateLimited:
            self.breaker.trip("429")
            result.failed = [(s, e, "rate limited (429)") for s, e in wanted]
        except httpx.HTTPError as exc:
            self.breaker.trip(type(exc).__name__)
            result.failed = [(s, e, f"{type(exc).__name__}") for s, e in wanted]
        except ValueError as exc:  # not JSON, not OHLC rows, no coin list: CoinGecko failed, nothing is kept
            warn(log, "DATA_REJECT", f"coingecko: unusable answer for {request.symbol}: {exc}",
                 symbol=request.symbol, provider=self.name, error=type(exc).__name__)
            result.failed = [(s, e, f"unusable answer: {type(exc).__name__}") for s, e in wanted]
        return result

    def _coin_id(self, base: str) -> str | None:
        if base in self.coin_ids:
            return self.coin_ids[base]
        if self._coins_list is None:
            resp = self._get("/api/v3/coins/list", {})
            if resp.status_code != 200:
                raise ValueError(f"coins/list http {resp.status_code}")
            doc = resp.json()
            if not isinstance(doc, list) or not all(isinstance(c, dict) for c in doc):
                raise ValueError("coins/list answer is not a list of coins")
            self._coins_list = doc
        matches = [str(c["id"]) for c in self._coins_list
                   if c.get("id") and str(c.get("symbol", "")).upper() == base]
        # Tickers are not unique on CoinGecko (many tokens call themselves "ETH"): guessing would mean
        # storing some other coin's prices, so an ambiguous ticker is simply unavailable.
        return matches[0] if len(matches) == 1 else None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s, headers={"accept": "application/json"})
        return self._client

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            wait = self._last_call + self.min_interval_s - self.clock()
            if wait > 0:
                self.sleep(wait)
            self._last_call = self.clock()
            self._requests += 1
            resp = self._http().get(self.base_url + path, params=params)
            if resp.status_code != 429:
                return resp
            if attempt == self.max_retries:
                break
            self.sleep(min(_retry_after(resp), self.max_retry_after_s))
        raise RateLimited(path)


def _retry_after(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return 60.0  # no usable header: CoinGecko's free tier resets per minute
