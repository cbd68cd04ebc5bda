"""The one interface every candle provider implements, plus the few definitions they all share.

A provider is asked for a list of half-open open-time ranges ``[start, end)`` of one symbol and timeframe and
answers with three things, because "no candle" has two very different meanings:

* ``frame``: the candles it returned (closed or not; the caller drops forming candles and validates);
* ``answered``: ranges it answered *authoritatively*.  A grid time inside an answered range without a candle
  in ``frame`` is the provider saying "no candle exists there" (exchange outage, before listing);
* ``failed``: ranges it could not answer (down, 429 after retries, 5xx, corrupt zip, bad checksum).

Everything else in the request is *unavailable*: the provider simply does not serve it (archive 404,
CoinGecko outside its window).  Only providers whose data comes from the cache's own exchange are
``authoritative`` for it; a candle from another venue may fill a hole but can never prove one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

CANDLE_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.Int64(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}

Range = tuple[int, int]  # [start_ms, end_ms) on the candle open-time grid

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Timeframes whose candles sit on a fixed grid from the Unix epoch (weeks start on Monday and months vary,
# so they are deliberately not supported: the coverage arithmetic relies on a regular grid).
SUPPORTED_TIMEFRAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


def interval_ms(timeframe: str) -> int:
    """Milliseconds per candle of ``timeframe`` ('1h' -> 3_600_000); ValueError for unsupported ones."""
    if timeframe not in SUPPORTED_TIMEFRAMES:
        raise ValueError(f"unsupported timeframe {timeframe!r}; expected one of {', '.join(SUPPORTED_TIMEFRAMES)}")
    return int(timeframe[:-1]) * _UNIT_MS[timeframe[-1]]


# A candle counts as closed only this long after its nominal close (open + interval).  The exchange's clock, and
# the moment its kline feed finalises a candle, can trail ours by a fraction of a second even with NTP: asked
# right at the boundary, it still sends the forming candle as the newest one, and a candle taken as closed is
# stored for good (its slot is resolved, never asked again).  5 s is far beyond any healthy clock skew and costs
# little: a bar is picked up at most one poll later.  Every "is it closed" decision goes through close_cutoff.
CLOSE_GRACE_MS = 5_000


def close_cutoff(now_ms: int) -> int:
    """The latest close time (open + interval) a candle may have and still count as closed at ``now_ms``."""
    return now_ms - CLOSE_GRACE_MS


def last_closed_open(now_ms: int, iv: int) -> int:
    """Open time of the newest candle that is closed at ``now_ms`` (open + interval <= close_cutoff(now))."""
    return (close_cutoff(now_ms) // iv) * iv - iv


# Quote currencies recognised in an exchange id with no separator ("BTCUSDT"), longest first so that FDUSD
# is not read as ...USD.
KNOWN_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "TRY", "BTC", "ETH", "BNB")


def split_symbol(symbol: str) -> tuple[str, str]:
    """'BTC/USDT', 'BTC_USDT', 'BTC-USDT' or the exchange id 'BTCUSDT' -> ('BTC', 'USDT'); ValueError otherwise."""
    text = symbol.strip().upper()
    for sep in ("/", "_", "-"):
        if sep in text:
            base, _, quote = text.partition(sep)
            break
    else:
        quote = next((q for q in KNOWN_QUOTES if text.endswith(q) and len(text) > len(q)), "")
        base = text[: len(text) - len(quote)] if quote else ""
    if not base or not quote or not base.isalnum() or not quote.isalnum():
        raise ValueError(f"symbol {symbol!r} is not BASE/QUOTE (e.g. BTC/USDT, BTC_USDT or BTCUSDT)")
    return base, quote


def unified_symbol(symbol: str) -> str:
    base, quote = split_symbol(symbol)
    return f"{base}/{quote}"


def file_stem(symbol: str) -> str:
    """Cache file stem, the same as /work/shared/data: 'BTC/USDT' -> 'BTC_USDT'."""
    base, quote = split_symbol(symbol)
    return f"{base}_{quote}"


def empty_candles() -> pl.DataFrame:
    return pl.DataFrame(schema=CANDLE_SCHEMA)


@dataclass(frozen=True)
class FetchRequest:
    exchange: str  # the venue whose cache is being filled (decides who is authoritative)
    symbol: str  # unified, 'BTC/USDT'
    timeframe: str
    ranges: tuple[Range, ...]  # sorted, disjoint, on the grid, all before now
    now_ms: int
    # Extra history wanted before each range (indicator warm-up, edge cross-check), to be included only when
    # it costs no extra request: the tail starts its page earlier; the archive's month files already hold it.
    lookback_ms: int = 0

    @property
    def interval_ms(self) -> int:
        return interval_ms(self.timeframe)


@dataclass
class FetchResult:
    provider: str
    frame: pl.DataFrame = field(default_factory=empty_candles)
    answered: list[Range] = field(default_factory=list)
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, reason)
    requests: int = 0
    flags: frozenset[str] = frozenset()  # e.g. {"no_volume"}: recorded in the coverage metadata
    parse_s: float = 0.0  # CPU time spent turning response bytes into candles (summed over worker threads)


class Breaker:
    """Stop calling a provider that is down or rate limiting us, for a while (no hammering).

    Tripped by the provider on a network error, 5xx or 429; while open, the provider answers "failed"
    without making a request.  Lives as long as the provider object (one ``sync`` call by default).
    """

    def __init__(self, cooldown_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._open_until = float("-inf")
        self.reason = ""

    def trip(self, reason: str) -> None:
        self._open_until = self.clock() + self.cooldown_s
        self.reason = reason

    @property
    def open(self) -> bool:
        return self.clock() < self._open_until


class Provider(Protocol):
    """A source of candles.  ``fetch`` must not raise for network/data problems: report them in ``failed``.

    If it raises anyway (a bug), sync logs ``[PROVIDER_ERROR]`` with the traceback and treats every range it
    was asked for as failed by this provider, so the rest of the chain is still asked.
    """

    name: str

    def authoritative(self, exchange: str) -> bool:
        """True when this provider's candles *are* ``exchange``'s candles (so it can confirm a gap)."""
        ...

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        """Cheap, offline check: False means do not even ask (no request is made)."""
        ...

    def fetch(self, request: FetchRequest) -> FetchResult: ...

    def close(self) -> None: ...


class SerialFetch:
    """``fetch`` for providers whose client must not be shared between threads: one request at a time, with
    the HTTP calls ``_fetch`` makes counted (``_requests += 1`` per call) into ``FetchResult.requests``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0

    def _fetch(self, request: FetchRequest) -> FetchResult:
        raise NotImplementedError

    def fetch(self, request: FetchRequest) -> FetchResult:
        with self._lock:
            self._requests = 0
            result = self._fetch(request)
            result.requests = self._requests
            return result
