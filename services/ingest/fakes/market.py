"""Real candles for the fake servers: /work/shared/data (read-only), with per-test overrides.

``MarketData`` hands out numpy arrays per (timeframe, 'BTC_USDT'); ``set`` replaces one series (e.g. real
rows relabelled into 2025 to exercise the archive's microsecond timestamps) without touching the files.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
INTERVALS = {"1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}


class MarketData:
    def __init__(self, data_dir: Path | str, exchange: str = "binance") -> None:
        self.root = Path(data_dir) / exchange
        self._cache: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every override so servers can drop derived caches

    def stems(self, timeframe: str) -> list[str]:
        on_disk = {p.stem for p in (self.root / timeframe).glob("*.parquet")}
        overridden = {stem for (tf, stem), arr in self._cache.items() if tf == timeframe and arr is not None}
        return sorted(on_disk | overridden)

    def arrays(self, timeframe: str, stem: str) -> dict[str, np.ndarray] | None:
        key = (timeframe, stem)
        with self._lock:
            if key not in self._cache:
                path = self.root / timeframe / f"{stem}.parquet"
                if path.exists():
                    df = pl.read_parquet(path)
                    self._cache[key] = {c: df[c].to_numpy() for c in COLUMNS}
                else:
                    self._cache[key] = None
            return self._cache[key]

    def set(self, timeframe: str, stem: str, frame: pl.DataFrame | None) -> None:
        """Replace (or with None, remove) one series for the fakes."""
        with self._lock:
            self._cache[(timeframe, stem)] = None if frame is None else {c: frame[c].to_numpy() for c in COLUMNS}
            self.version += 1

    def between(self, timeframe: str, stem: str, start: int, end: int) -> dict[str, np.ndarray] | None:
        """Rows with ``start <= open time < end`` (None when the series does not exist)."""
        arr = self.arrays(timeframe, stem)
        if arr is None:
            return None
        ts = arr["timestamp"]
        lo, hi = np.searchsorted(ts, start, side="left"), np.searchsorted(ts, end, side="left")
        return {c: v[lo:hi] for c, v in arr.items()}


def stem_of_pair(pair: str) -> str | None:
    """'BTCUSDT' -> 'BTC_USDT' (the fakes only know USDT pairs, like the shared data)."""
    return f"{pair[:-4]}_USDT" if pair.endswith("USDT") and len(pair) > 4 else None
