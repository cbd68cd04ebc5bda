"""The data.binance.vision face: monthly and daily kline zips plus ``.CHECKSUM`` files, built in memory.

Same paths, same zip layout (one header-less CSV with the twelve kline columns, prices as 8-decimal
strings), same ``"<sha256>  <name>"`` checksum body as the real archive.  Open/close times are written in
milliseconds before 2025 and in microseconds from 2025 on, like the real spot archive.

Publication follows the real rules at the simulator's clock: a monthly file exists once its month is over, a
daily file once its day is over; no rows in the period -> 404.  So the archive never holds a candle the trading
API has not priced from yet.

Columns the candles do not have are filled with stand-ins that no consumer reads: quote volume =
volume x close, trades = 0, taker volumes = 0.  Content faults (see ``faults.py``): ``corrupt_zip``,
``encrypted_flag``, ``bad_checksum``, ``seconds_timestamps``.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import polars as pl

from aura.exchange_sim.candles import CandleStore, pair_of
from aura.exchange_sim.faults import Fault
from aura.exchange_sim.reply import Response
from services.ingest.providers.base import SUPPORTED_TIMEFRAMES, interval_ms

MICROS_FROM_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC: the spot archive writes µs from here on
_PATH = re.compile(
    r"^/data/spot/(?P<freq>monthly|daily)/klines/(?P<pair>[A-Z0-9]+)/(?P<tf>\w+)/"
    r"(?P<name>(?P=pair)-(?P=tf)-(?P<y>\d{4})-(?P<m>\d{2})(?:-(?P<d>\d{2}))?\.zip)(?P<chk>\.CHECKSUM)?$"
)


def build_kline_csv(rows: dict[str, np.ndarray], iv: int, micros: bool) -> bytes:
    """Kline CSV bytes in the archive's format (no header, 12 columns, 8-decimal prices)."""
    scale = 1000 if micros else 1
    ts = rows["timestamp"].astype(np.int64)
    n = len(ts)
    df = pl.DataFrame(
        {
            "open_time": ts * scale,
            "open": rows["open"],
            "high": rows["high"],
            "low": rows["low"],
            "close": rows["close"],
            "volume": rows["volume"],
            "close_time": (ts + iv) * scale - 1,
            "quote_volume": rows["volume"] * rows["close"],
            "trades": np.zeros(n, dtype=np.int64),
            "taker_buy_base": np.zeros(n),
            "taker_buy_quote": np.zeros(n),
            "ignore": np.zeros(n, dtype=np.int64),
        }
    )
    return df.write_csv(include_header=False, float_precision=8).encode()


def build_zip(csv_name: str, csv: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(csv_name, csv)
    return buf.getvalue()


def checksum_body(zip_bytes: bytes, zip_name: str) -> bytes:
    return f"{hashlib.sha256(zip_bytes).hexdigest()}  {zip_name}\n".encode()


def corrupt(zip_bytes: bytes) -> bytes:
    """Flip bytes inside the compressed member: the zip still opens, but inflating or the CRC fails."""
    data = bytearray(zip_bytes)
    mid = len(data) // 3
    for i in range(mid, min(mid + 16, len(data))):
        data[i] ^= 0xFF
    return bytes(data)


def flag_encrypted(zip_bytes: bytes) -> bytes:
    """Set the "encrypted" general-purpose bit in the local and the central header (one flipped bit each)."""
    data = bytearray(zip_bytes)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(signature) + flag_offset] |= 0x1
    return bytes(data)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class Archive:
    PREFIX = "/data/"

    def __init__(self, store: CandleStore, now_ms: Callable[[], int]) -> None:
        self.store = store
        self.now_ms = now_ms
        self._zips: dict[tuple[str, ...], bytes | None] = {}
        self._version = -1
        self._lock = threading.Lock()

    @staticmethod
    def period(m: re.Match[str]) -> tuple[int, int]:
        y, mo = int(m["y"]), int(m["m"])
        if m["freq"] == "monthly":
            start = datetime(y, mo, 1, tzinfo=UTC)
            end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
            return _ms(start), _ms(end)
        start_ms = _ms(datetime(y, mo, int(m["d"]), tzinfo=UTC))
        return start_ms, start_ms + 86_400_000

    def zip_for(self, path: str) -> tuple[str, bytes] | None:
        """(zip name, zip bytes) for an archive path (with or without .CHECKSUM), None if not published."""
        m = _PATH.match(path)
        if m is None or m["tf"] not in SUPPORTED_TIMEFRAMES:
            return None
        stem = self.store.stem_of(m["tf"], m["pair"])
        start, end = self.period(m)
        if stem is None or end > self.now_ms():  # files appear only once their period is over
            return None
        key = (m["tf"], stem, m["name"])
        with self._lock:
            if self._version != self.store.version:
                self._zips.clear()
                self._version = self.store.version
            if key in self._zips:
                body = self._zips[key]
                return None if body is None else (m["name"], body)
        rows = self.store.between(m["tf"], stem, start, end)
        body = None
        if rows is not None and len(rows["timestamp"]):
            csv = build_kline_csv(rows, interval_ms(m["tf"]), micros=start >= MICROS_FROM_MS)
            body = build_zip(m["name"].removesuffix(".zip") + ".csv", csv)
        with self._lock:
            self._zips[key] = body
        return None if body is None else (m["name"], body)

    def prebuild(self, timeframe: str, stems: list[str]) -> int:
        """Build every published monthly zip of ``stems`` now (benchmarks time the client, not the server)."""
        count = 0
        for stem in stems:
            arr = self.store.arrays(timeframe, stem)
            if arr is None:
                continue
            pair = pair_of(stem)
            first = datetime.fromtimestamp(arr["timestamp"][0] / 1000, tz=UTC)
            month = datetime(first.year, first.month, 1, tzinfo=UTC)
            while _ms(month) <= arr["timestamp"][-1]:
                name = f"{pair}-{timeframe}-{month:%Y-%m}.zip"
                if self.zip_for(f"/data/spot/monthly/klines/{pair}/{timeframe}/{name}"):
                    count += 1
                month = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
        return count

    def in_seconds(self, path: str, name: str) -> bytes:
        m = _PATH.match(path)
        assert m is not None
        start, end = self.period(m)
        rows = self.store.between(m["tf"], self.store.stem_of(m["tf"], m["pair"]) or "", start, end)
        assert rows is not None
        rows = {**rows, "timestamp": rows["timestamp"] // 1000}
        iv_s = interval_ms(m["tf"]) // 1000
        return build_zip(name.removesuffix(".zip") + ".csv", build_kline_csv(rows, iv_s, False))

    def handle(self, path: str, fault: Fault | None) -> Response:
        found = self.zip_for(path)
        if found is None:
            return Response(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        name, body = found
        kind = fault.kind if fault is not None else None
        if kind == "corrupt_zip":
            body = corrupt(body)
        elif kind == "encrypted_flag":
            body = flag_encrypted(body)
        elif kind == "seconds_timestamps":
            body = self.in_seconds(path, name)
        if path.endswith(".CHECKSUM"):
            digest = checksum_body(body, name)
            if kind == "bad_checksum":
                digest = checksum_body(body + b"x", name)
            return Response(200, digest, content_type="text/plain")
        return Response(200, body, content_type="application/zip")
