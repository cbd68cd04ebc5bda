"""Binance's public kline archive (data.binance.vision): the cheapest, most complete history there is.

Layout (spot): ``{base}/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-01.zip`` for complete months and
``{base}/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-2024-01-15.zip`` for single days, each with a
``.CHECKSUM`` beside it holding ``"<sha256 hex>  <zip file name>"``.  Each zip holds one header-less CSV
with the twelve /api/v3/klines columns.  Monthly files appear at the start of the next month and daily
files the next day, so: monthly files for complete months, daily files for the current month (and for the
previous month while its monthly file is not published yet).  404 = the archive does not have that range.

Since 2025 the spot archive writes open times in microseconds instead of milliseconds.  The unit is
decided per value by magnitude (ms and µs for the years 2001-2286 fall in disjoint bands); a value in
neither band fails the whole file instead of being guessed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from services.ingest.coverage import intersect, normalize
from services.ingest.providers.base import (
    SUPPORTED_TIMEFRAMES,
    Breaker,
    FetchRequest,
    FetchResult,
    Range,
    empty_candles,
    split_symbol,
)
from shared.logging import warn

try:
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - zlib-ng comes with ccxt; the stdlib zlib gives the same bytes
    _zlib = zlib  # type: ignore[assignment]

log = logging.getLogger("aura.ingest.archive")
_ZLIB_ERRORS = (zlib.error, _zlib.error)

KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
    "taker_buy_base", "taker_buy_quote", "ignore",
)
_MS_BAND = (10**12, 10**13)  # 2001-09-09 .. 2286-11-20 in milliseconds
_US_BAND = (10**15, 10**16)  # the same years in microseconds
_DAY = 86_400_000


class ArchiveFormatError(ValueError):
    """The file downloaded fine but its content cannot be trusted (bad unit, unparsable CSV)."""


def normalize_open_times(raw: np.ndarray) -> np.ndarray:
    """Open times in ms from a column that may hold ms or µs values (decided per value, never guessed)."""
    raw = raw.astype(np.int64, copy=False)
    if len(raw) and _MS_BAND[0] <= raw.min() and raw.max() < _MS_BAND[1]:
        return raw  # all in the ms band (every file before 2025): the per-value test below would say the same
    is_ms = (raw >= _MS_BAND[0]) & (raw < _MS_BAND[1])
    is_us = (raw >= _US_BAND[0]) & (raw < _US_BAND[1]) & (raw % 1000 == 0)
    if not np.all(is_ms | is_us):
        bad = raw[~(is_ms | is_us)][:3].tolist()
        raise ArchiveFormatError(f"open time(s) in no known unit: {bad}")
    return np.where(is_us, raw // 1000, raw)


def parse_kline_csv(data: bytes, *, use_threads: bool = False) -> pl.DataFrame:
    """The six candle columns of a Binance kline CSV (no header; a header line is tolerated and skipped)."""
    data = strip_header(data)
    if not data.strip():
        return empty_candles()
    table = pacsv.read_csv(
        pa.BufferReader(data),  # zero-copy: a BytesIO would be copied block by block into Arrow buffers
        read_options=pacsv.ReadOptions(column_names=list(KLINE_COLUMNS), use_threads=use_threads),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(KLINE_COLUMNS[:6]),
            column_types={"open_time": pa.int64(), **{c: pa.float64() for c in KLINE_COLUMNS[1:6]}},
        ),
    )
    ts = normalize_open_times(table.column("open_time").to_numpy())
    return pl.DataFrame(
        {
            "timestamp": ts,
            **{c: table.column(c).to_numpy() for c in ("open", "high", "low", "close", "volume")},
        }
    )


def strip_header(data: bytes) -> bytes:
    """Drop a header line if there is one (the spot files have none, but a header must not become a row)."""
    if data[:1].isdigit() or not data:
        return data
    newline = data.find(b"\n")
    return b"" if newline < 0 else data[newline + 1 :]


def parse_checksum(text: str, expected_name: str) -> str:
    """The sha256 hex from a ``.CHECKSUM`` body ("<hex>  <name>"); ValueError if malformed or for another file."""
    parts = text.split()
    if len(parts) < 1 or len(parts[0]) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in parts[0]):
        raise ValueError("malformed CHECKSUM")
    if len(parts) >= 2 and parts[1].lstrip("*") != expected_name:
        raise ValueError(f"CHECKSUM names {parts[1]!r}, expected {expected_name!r}")
    return parts[0].lower()


def unzip_single(data: bytes) -> bytes:
    """The one CSV inside an archive zip, its size and CRC-32 verified (BadZipFile if anything is off).

    zipfile reads the directory; a deflated member is then inflated in one call, with zlib-ng when it is
    installed (~2x faster than the stdlib zlib; ccxt depends on it) and both release the GIL.  Anything
    unusual (stored, other methods) goes through ``zipfile`` itself; an encrypted member is refused.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = [i for i in zf.infolist() if not i.filename.endswith("/")]
        if len(infos) != 1:
            raise zipfile.BadZipFile(f"expected one file in the zip, found {len(infos)}")
        info = infos[0]
        if info.flag_bits & 0x1:
            # The archive never encrypts; the bit set means damage (zipfile would raise RuntimeError for it).
            raise zipfile.BadZipFile(f"member {info.filename!r} is flagged encrypted")
        if info.compress_type != zipfile.ZIP_DEFLATED:
            return zf.read(info)  # zipfile verifies the member's CRC while reading
    header = data[info.header_offset : info.header_offset + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad magic number for file header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    name = data[info.header_offset + 30 : info.header_offset + 30 + name_len]
    if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename:
        raise zipfile.BadZipFile(f"file name in directory {info.orig_filename!r} and header {name!r} differ")
    raw = memoryview(data)[start : start + info.compress_size]
    if len(raw) != info.compress_size:
        raise zipfile.BadZipFile(f"truncated member {info.filename!r}")
    try:
        out = _zlib.decompress(raw, -15, max(info.file_size, 1))
    except _ZLIB_ERRORS as exc:
        raise zipfile.BadZipFile(f"bad deflate stream in {info.filename!r}: {exc}") from exc
    if len(out) != info.file_size or _zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 or size for file {info.filename!r}")
    return out


@dataclass(frozen=True)
class ArchiveFile:
    period: Range  # [start, end) the file covers
    url: str
    name: str  # the zip's file name, as the CHECKSUM names it
    monthly: bool


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _month_start(ms: int) -> datetime:
    d = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC)


def _next_month(d: datetime) -> datetime:
    return datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)


def plan_files(
    base_url: str, pair: str, timeframe: str, ranges: list[Range], now_ms: int
) -> tuple[list[ArchiveFile], dict[Range, list[ArchiveFile]]]:
    """Files to download for ``ranges``: (primary files, daily fallbacks keyed by a monthly file's period).

    Pure: only ``now_ms`` decides what should already be published.
    """
    ranges = normalize(ranges)
    if not ranges:
        return [], {}
    root = base_url.rstrip("/") + "/data/spot"
    current_month = _ms(_month_start(now_ms))
    previous_month = _ms(_month_start(current_month - 1))

    def daily(day: int) -> ArchiveFile:
        stamp = datetime.fromtimestamp(day / 1000, tz=UTC).strftime("%Y-%m-%d")
        name = f"{pair}-{timeframe}-{stamp}.zip"
        return ArchiveFile((day, day + _DAY), f"{root}/daily/klines/{pair}/{timeframe}/{name}", name, False)

    def days_in(period: Range) -> list[ArchiveFile]:
        out = []
        for start, end in intersect(ranges, [period]):
            day = start - start % _DAY
            while day < end:
                if day + _DAY <= now_ms:  # a day's file exists only once the day is over
                    out.append(daily(day))
                day += _DAY
        return out

    primary: list[ArchiveFile] = []
    fallback: dict[Range, list[ArchiveFile]] = {}
    month = _month_start(ranges[0][0])
    while _ms(month) < ranges[-1][1]:
        period = (_ms(month), _ms(_next_month(month)))
        month = _next_month(month)
        if not intersect(ranges, [period]):
            continue
        if period[0] >= current_month:
            primary.extend(days_in(period))
            continue
        name = f"{pair}-{timeframe}-{datetime.fromtimestamp(period[0] / 1000, tz=UTC).strftime('%Y-%m')}.zip"
        primary.append(ArchiveFile(period, f"{root}/monthly/klines/{pair}/{timeframe}/{name}", name, True))
        if period[0] == previous_month:
            fallback[period] = days_in(period)  # monthly files appear a few days into the next month
    # Files are sorted by period so results come back in time order.
    return sorted(primary, key=lambda f: f.period), fallback


class _Counter:
    """Requests made by one fetch (thread-safe: downloads run in a pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0
        self.parse_s = 0.0

    def add(self) -> None:
        with self._lock:
            self.value += 1

    def parse(self, seconds: float) -> None:
        with self._lock:
            self.parse_s += seconds


@dataclass
class _Outcome:
    file: ArchiveFile
    status: str  # "ok" | "missing" | "failed"
    csv: bytes | None = None  # verified, unzipped, header-less CSV
    reason: str = ""


class BinanceArchiveProvider:
    """Provider over data.binance.vision (or any server with its layout, e.g. the venue simulator)."""

    name = "binance_archive"

    def __init__(
        self,
        base_url: str,
        *,
        workers: int = 8,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        cooldown_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.transport = transport  # e.g. httpx.MockTransport: the same code path without sockets (benchmarks)
        self.breaker = Breaker(cooldown_s)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    # -- Provider interface
    def authoritative(self, exchange: str) -> bool:
        return exchange == "binance"

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        return exchange == "binance" and timeframe in SUPPORTED_TIMEFRAMES

    def fetch(self, request: FetchRequest) -> FetchResult:
        base, quote = split_symbol(request.symbol)
        pair = base + quote
        primary, fallback = plan_files(self.base_url, pair, request.timeframe, list(request.ranges), request.now_ms)
        counter = _Counter()
        outcomes = self._download(primary, counter)
        unpublished = [o for o in outcomes if o.status == "missing" and o.file.period in fallback]
        if unpublished:
            outcomes = [o for o in outcomes if o not in unpublished]
            outcomes += self._download([f for o in unpublished for f in fallback[o.file.period]], counter)
        started = time.perf_counter()
        frame = self._parse(outcomes)
        result = FetchResult(provider=self.name, requests=counter.value,
                             parse_s=counter.parse_s + time.perf_counter() - started)
        result.frame = frame
        result.answered = normalize([o.file.period for o in outcomes if o.status == "ok"])
        result.failed = [(o.file.period[0], o.file.period[1], o.reason) for o in outcomes if o.status == "failed"]
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- internals
    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
                self._client = httpx.Client(timeout=self.timeout_s, limits=limits, follow_redirects=True,
                                            transport=self.transport)
            return self._client

    def _get(self, url: str, counter: _Counter) -> httpx.Response:
        counter.add()
        return self._http().get(url)

    def _download(self, files: list[ArchiveFile], counter: _Counter) -> list[_Outcome]:
        if not files:
            return []
        if len(files) == 1 or self.workers == 1:
            return [self._one(f, counter) for f in files]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(files))) as pool:
            return list(pool.map(lambda f: self._one(f, counter), files))

    def _parse(self, outcomes: list[_Outcome]) -> pl.DataFrame:
        """All good files' candles, parsed in one multi-threaded pass (~2x faster than file by file).

        If the batch fails (a file with garbage or timestamps in no known unit), the files are parsed one by
        one so that only the guilty ones are marked failed (in place) and the rest is kept.
        """
        good = sorted((o for o in outcomes if o.status == "ok" and o.csv), key=lambda o: o.file.period)
        if not good:
            return empty_candles()
        try:
            return parse_kline_csv(b"".join(o.csv for o in good), use_threads=True)  # type: ignore[misc]
        except (ArchiveFormatError, pa.ArrowInvalid, ValueError):
            pass
        frames = []
        for o in good:
            try:
                frames.append(parse_kline_csv(o.csv or b""))
            except (ArchiveFormatError, pa.ArrowInvalid, ValueError) as exc:
                warn(log, "DATA_REJECT", f"unusable archive file {o.file.name}: {exc}", url=o.file.url)
                o.status, o.reason, o.csv = "failed", f"corrupt: {type(exc).__name__}", None
        return pl.concat(frames, how="vertical") if frames else empty_candles()

    def _status(self, file: ArchiveFile, resp: httpx.Response, what: str) -> _Outcome | None:
        if resp.status_code == 200:
            return None
        if resp.status_code == 404:
            return _Outcome(file, "missing")
        if resp.status_code == 429 or resp.status_code >= 500:
            self.breaker.trip(f"http {resp.status_code}")  # overloaded or limiting us: leave it alone a while
        return _Outcome(file, "failed", reason=f"http {resp.status_code} on {what}")

    def _one(self, file: ArchiveFile, counter: _Counter) -> _Outcome:
        if self.breaker.open:
            return _Outcome(file, "failed", reason=f"not asked: archive unavailable ({self.breaker.reason})")
        try:
            resp = self._get(file.url + ".CHECKSUM", counter)
            if (bad := self._status(file, resp, "CHECKSUM")) is not None:
                return bad
            expected = parse_checksum(resp.text, file.name)
            resp = self._get(file.url, counter)
            if (bad := self._status(file, resp, "zip")) is not None:
                return bad
            body = resp.content
            # CPU time of this thread: with several downloads in flight, wall time would also count the waits
            # for the GIL and the network, which are not parsing.
            started = time.thread_time()
            actual = hashlib.sha256(body).hexdigest()
            if actual != expected:
                warn(log, "DATA_REJECT", f"checksum mismatch for {file.name}", url=file.url, expected=expected,
                     actual=actual)
                return _Outcome(file, "failed", reason="bad checksum")
            csv = strip_header(unzip_single(body))
            if csv and not csv.endswith(b"\n"):
                csv += b"\n"  # files are concatenated for one parse: a missing final newline would merge rows
            counter.parse(time.thread_time() - started)
        except httpx.HTTPError as exc:
            self.breaker.trip(f"network: {type(exc).__name__}")
            return _Outcome(file, "failed", reason=f"network: {type(exc).__name__}")
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError) as exc:
            # A damaged zip fails in many ways (bad header, bad deflate stream, CRC): all mean 'do not trust'.
            warn(log, "DATA_REJECT", f"unusable archive file {file.name}: {exc}", url=file.url)
            return _Outcome(file, "failed", reason=f"corrupt: {type(exc).__name__}")
        return _Outcome(file, "ok", csv=csv)
