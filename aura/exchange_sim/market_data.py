"""Replayed candles and trading rules: the simulator's only source of prices.

Prices come from real Binance daily (or 4h/1h) candles on disk.  A replay clock points at one bar; a
symbol's "current price" is that bar's close unless a test has pinned another price.  Rules come from the
repo's ``markets.json`` (Binance's published filters) when it lists the symbol, otherwise they are derived
from the price level the way Binance sizes ticks and lots, so every symbol in the data can trade.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

_TIMEFRAMES_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000,
                  "1d": 86_400_000}


def dec(value: float | int | str) -> Decimal:
    """Decimal of the shortest repr, so 97000.01 stays 97000.01 instead of its binary expansion."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


@dataclass(frozen=True)
class SymbolRules:
    step_size: Decimal
    tick_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_price: Decimal
    max_price: Decimal
    min_notional: Decimal


@dataclass(frozen=True)
class SymbolSeries:
    symbol_id: str  # Binance id, "BTCUSDT"
    base: str
    quote: str
    ts: np.ndarray  # int64 candle open times, ascending
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def index_at(self, clock_ms: int) -> int:
        """Index of the last bar opened at or before ``clock_ms``; -1 before listing."""
        return int(np.searchsorted(self.ts, clock_ms, side="right")) - 1


def resolve_candle_dir(data_dir: Path, timeframe: str = "1d") -> Path:
    """Accept either a folder of ``BASE_QUOTE.parquet`` files or a replay root holding ``binance/<tf>/``."""
    nested = data_dir / "binance" / timeframe
    return nested if nested.is_dir() else data_dir


def load_series(candle_dir: Path, only: set[str] | None = None) -> dict[str, SymbolSeries]:
    out: dict[str, SymbolSeries] = {}
    for path in sorted(candle_dir.glob("*_*.parquet")):
        base, _, quote = path.stem.partition("_")
        symbol_id = f"{base}{quote}"
        if only is not None and symbol_id not in only:
            continue
        df = pl.read_parquet(path, columns=["timestamp", "open", "high", "low", "close", "volume"])
        if df.height == 0:
            continue
        cols = {c: df[c].to_numpy() for c in df.columns}
        out[symbol_id] = SymbolSeries(symbol_id, base, quote, cols["timestamp"].astype(np.int64), cols["open"],
                                      cols["high"], cols["low"], cols["close"], cols["volume"])
    if not out:
        raise FileNotFoundError(f"no BASE_QUOTE.parquet candles found in {candle_dir}")
    return out


def infer_interval(series: dict[str, SymbolSeries]) -> str:
    diffs = [int(np.median(np.diff(s.ts))) for s in series.values() if len(s.ts) > 1]
    step = min(diffs) if diffs else _TIMEFRAMES_MS["1d"]
    for name, ms in _TIMEFRAMES_MS.items():
        if ms == step:
            return name
    return "1d"


def interval_ms(interval: str) -> int:
    return _TIMEFRAMES_MS[interval]


def load_rules_file(candle_dir: Path) -> dict[str, dict[str, float]]:
    """``markets.json`` beside the candles or up to two folders above (the repo's replay layout)."""
    for folder in (candle_dir, candle_dir.parent, candle_dir.parent.parent):
        path = folder / "markets.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            return {k.replace("/", ""): v for k, v in raw.items() if not k.startswith("_")}
    return {}


def _pow10(exp: int) -> Decimal:
    return Decimal(1).scaleb(exp)


def derive_rules(ref_price: float) -> SymbolRules:
    """Binance-like filters for a symbol trading near ``ref_price``.

    Tick = about 1/10,000 of the price (0.01 at most, 1e-8 at least); lot step = 10^floor(log10(1/price))
    clamped to [1e-8, 1], so one step is worth 0.1..1 USDT: BTC at 97k gets 0.00001 as on Binance, DOGE 1.
    """
    p = max(ref_price, 1e-12)
    tick_exp = min(-2, max(-8, math.floor(math.log10(p)) - 4))
    step_exp = min(0, max(-8, math.floor(math.log10(1.0 / p))))
    step = _pow10(step_exp)
    return SymbolRules(step_size=step, tick_size=_pow10(tick_exp), min_qty=step, max_qty=Decimal(9_000_000),
                       min_price=_pow10(tick_exp), max_price=Decimal(10_000_000), min_notional=Decimal(5))


def rules_from_mapping(raw: dict[str, float], fallback: SymbolRules) -> SymbolRules:
    step = dec(raw.get("step_size", fallback.step_size))
    tick = dec(raw.get("tick_size", fallback.tick_size))
    return SymbolRules(step_size=step, tick_size=tick, min_qty=dec(raw.get("min_qty", step)),
                       max_qty=dec(raw.get("max_qty", fallback.max_qty)), min_price=tick,
                       max_price=dec(raw.get("max_price", fallback.max_price)),
                       min_notional=dec(raw.get("min_notional", fallback.min_notional)))
