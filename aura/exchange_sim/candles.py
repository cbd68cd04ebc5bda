"""The simulator's one market history: real candles on disk, one folder per timeframe, read-only.

Every face of the simulator reads this store and nothing else: the trading API's prices, klines and tickers,
the archive's zips and CoinGecko's OHLC.  What a face may *show* of it at a given moment is the market's
business (``market.py``: nothing after the clock); the store only hands out numpy arrays per
(timeframe, ``BASE_QUOTE`` stem).  Tests may replace one series (``set``) without touching the files, e.g.
to punch a hole or relabel real rows into 2025; ``version`` tells derived caches to rebuild.

Accepted layouts for ``data_dir``: a root holding ``binance/<tf>/`` (the repo's ``data/replay``, the shared
data folder), one such timeframe folder (its sibling timeframes are served too), or a plain folder of
``BASE_QUOTE.parquet`` files taken to be of the trading timeframe.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import polars as pl

from services.ingest.cache import select_symbols
from services.ingest.providers.base import CANDLE_COLUMNS, SUPPORTED_TIMEFRAMES

Arrays = dict[str, np.ndarray]


@functools.lru_cache(maxsize=1024)
def _read(path: str, mtime_ns: int) -> Arrays:
    # Shared by every simulator a process starts on the same files (tests start hundreds): read-only arrays.
    df = pl.read_parquet(path, columns=list(CANDLE_COLUMNS))
    out = {c: df[c].to_numpy().astype(np.int64 if c == "timestamp" else np.float64) for c in CANDLE_COLUMNS}
    for arr in out.values():
        arr.setflags(write=False)
    return out


def pair_of(stem: str) -> str:
    """'BTC_USDT' -> 'BTCUSDT' (the Binance symbol id)."""
    return stem.replace("_", "")


def _folders(data_dir: Path, timeframe: str) -> dict[str, Path]:
    nested = data_dir / "binance"
    if (nested / timeframe).is_dir():
        return {tf: nested / tf for tf in SUPPORTED_TIMEFRAMES if (nested / tf).is_dir()}
    if data_dir.name in SUPPORTED_TIMEFRAMES:
        if data_dir.name != timeframe:
            raise ValueError(f"candle folder {data_dir} holds {data_dir.name} candles, not {timeframe}")
        return {tf: data_dir.parent / tf for tf in SUPPORTED_TIMEFRAMES if (data_dir.parent / tf).is_dir()}
    return {timeframe: data_dir}


class CandleStore:
    def __init__(self, data_dir: Path | str, timeframe: str = "1d", symbols: tuple[str, ...] | None = None) -> None:
        self.folders = _folders(Path(data_dir), timeframe)
        self.trading_dir = self.folders[timeframe]
        # Binance ids ("BTCUSDT") the simulator serves; None: every file.  A symbol the trading folder does not
        # hold is refused here, naming what it holds: otherwise a typo silently serves a smaller market.
        self.only = None
        if symbols:
            on_disk = sorted(p.stem for p in self.trading_dir.glob("*_*.parquet"))
            stems = select_symbols(symbols, on_disk, str(self.trading_dir), label=pair_of)
            self.only = frozenset(pair_of(s) for s in stems)
        self._overrides: dict[tuple[str, str], Arrays | None] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped by every override so derived caches (zips, timelines) rebuild
        self._listing: dict[tuple[str, int], dict[str, str]] = {}  # (tf, version) -> pair -> stem

    def timeframes(self) -> list[str]:
        return list(self.folders)

    def _pairs(self, timeframe: str) -> dict[str, str]:
        # Listed once per version: every kline or ticker request looks its symbol up here.
        key = (timeframe, self.version)
        listing = self._listing.get(key)
        if listing is None:
            folder = self.folders.get(timeframe)
            on_disk = {p.stem for p in folder.glob("*_*.parquet")} if folder is not None else set()
            with self._lock:
                kept = {stem for (tf, stem), arr in self._overrides.items() if tf == timeframe and arr is not None}
                gone = {stem for (tf, stem), arr in self._overrides.items() if tf == timeframe and arr is None}
            stems = sorted(s for s in (on_disk | kept) - gone if self.only is None or pair_of(s) in self.only)
            listing = self._listing[key] = {pair_of(s): s for s in stems}
        return listing

    def stems(self, timeframe: str) -> list[str]:
        return list(self._pairs(timeframe).values())

    def stem_of(self, timeframe: str, pair: str) -> str | None:
        """'BTCUSDT' -> 'BTC_USDT' if the store has that series."""
        return self._pairs(timeframe).get(pair)

    def arrays(self, timeframe: str, stem: str) -> Arrays | None:
        if self.only is not None and pair_of(stem) not in self.only:
            return None
        with self._lock:
            if (timeframe, stem) in self._overrides:
                return self._overrides[(timeframe, stem)]
        folder = self.folders.get(timeframe)
        path = folder / f"{stem}.parquet" if folder is not None else None
        if path is None or not path.is_file():
            return None
        arrays = _read(str(path), path.stat().st_mtime_ns)
        return arrays if len(arrays["timestamp"]) else None

    def set(self, timeframe: str, stem: str, frame: pl.DataFrame | None) -> None:
        """Replace (or with None, remove) one series; the files stay as they are."""
        arrays = None if frame is None else {c: frame[c].to_numpy() for c in CANDLE_COLUMNS}
        with self._lock:
            self._overrides[(timeframe, stem)] = arrays
            self.version += 1

    def between(self, timeframe: str, stem: str, start: int, end: int) -> Arrays | None:
        """Rows with ``start <= open time < end`` (None when the series does not exist)."""
        arr = self.arrays(timeframe, stem)
        if arr is None:
            return None
        ts = arr["timestamp"]
        lo, hi = np.searchsorted(ts, start, side="left"), np.searchsorted(ts, end, side="left")
        return {c: v[lo:hi] for c, v in arr.items()}
