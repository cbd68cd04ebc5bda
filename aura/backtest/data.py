"""Load the candle layout DIR/binance/TIMEFRAME/SYMBOL.parquet into one aligned Panel.

Rows are the union of every symbol's bar open times; a symbol without a candle on a row (not listed yet,
an exchange gap, its series already ended) is NaN there.  Nothing is forward-filled: the strategy never sees
an invented price.  Zero-volume candles are kept as the exchange reported them (the executor refuses to
fill on them, see execution.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from aura.strategy.types import MarketRule, Panel
from services.ingest.cache import load_panel as cache_load_panel
from services.ingest.cache import select_symbols

_COLUMNS = ("open", "high", "low", "close", "volume")
BENCHMARKS = ("SPY", "GOLD")


def list_symbols(data_dir: Path, timeframe: str) -> list[str]:
    folder = Path(data_dir) / "binance" / timeframe
    if not folder.is_dir():
        raise FileNotFoundError(f"no candle folder {folder}")
    return sorted(p.stem for p in folder.glob("*.parquet"))


def resolve_symbols(data_dir: Path, timeframe: str, symbols: Sequence[str]) -> list[str]:
    """``symbols`` as file stems of DIR/binance/TIMEFRAME, in the order given; ValueError naming every symbol
    the folder does not hold, and what it holds (``aura backtest`` and ``aura optimize`` alike)."""
    return select_symbols(symbols, list_symbols(data_dir, timeframe), str(Path(data_dir) / "binance" / timeframe))


def load_panel(data_dir: Path, timeframe: str, symbols: list[str] | None = None,
               end_ms: int | None = None) -> Panel:
    """Every symbol (or ``symbols``) of a timeframe, columns in name order, rows up to ``end_ms`` inclusive.

    The reading and alignment are the Parquet cache's own loader (one loader for backtests and live ingest);
    the backtester names columns by file stem ('BTC_USDT').
    """
    names = sorted(symbols) if symbols is not None else list_symbols(data_dir, timeframe)
    if not names:
        raise ValueError(f"no symbols to load from {data_dir}/binance/{timeframe}")
    panel = cache_load_panel(data_dir, "binance", timeframe, names, end_ms=end_ms)
    return Panel(tuple(names), panel.timestamps, panel.open, panel.high, panel.low, panel.close, panel.volume)


def load_benchmark(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(trading-date timestamps ms, adjusted close) of DIR/benchmarks/1d/NAME.parquet, or None if absent."""
    path = Path(data_dir) / "benchmarks" / "1d" / f"{name}.parquet"
    if not path.is_file():
        return None
    df = pl.read_parquet(path, columns=["timestamp", "close"]).sort("timestamp")
    df = df.filter(pl.col("close").is_finite() & (pl.col("close") > 0))
    return df["timestamp"].to_numpy().astype(np.int64), df["close"].to_numpy().astype(np.float64)


def last_valid_index(panel: Panel) -> np.ndarray:
    """Row of each symbol's last valid close (-1 if none): where its series ends in this data."""
    valid = panel.close > 0
    t_len = valid.shape[0]
    last = t_len - 1 - np.argmax(valid[::-1], axis=0)
    return np.where(valid.any(axis=0), last, -1).astype(np.int64)


@dataclass(frozen=True)
class RuleSet:
    rules: dict[str, MarketRule]
    source: str


def default_rules(panel: Panel, min_notional: float = 5.0) -> RuleSet:
    """Binance-like lot rules when no real ones are given.

    Step size: a power of ten about 1/100 of the units one dollar buys at the symbol's *first* close in the
    data (known at listing, so no lookahead), capped at 1: BTC at $4,000 trades in 1e-6, DOGE at $0.003 in
    whole coins.  Minimum notional 5 USDT as on Binance spot.
    """
    rules: dict[str, MarketRule] = {}
    for j, sym in enumerate(panel.symbols):
        col = panel.close[:, j]
        first = col[np.argmax(col > 0)] if np.any(col > 0) else 1.0
        step = min(1.0, 10.0 ** (math.floor(math.log10(1.0 / first)) - 2))
        rules[sym] = MarketRule(sym, step, step, step, min_notional)
    return RuleSet(rules, "default: step from first close, min notional 5 USDT")


def rules_from_json(doc: dict[str, dict[str, float]], symbols: tuple[str, ...]) -> dict[str, MarketRule]:
    """Rules keyed like data/replay/markets.json ("BTC/USDT" or "BTC_USDT")."""
    out: dict[str, MarketRule] = {}
    for sym in symbols:
        entry = doc.get(sym) or doc.get(sym.replace("_", "/"))
        if entry:
            out[sym] = MarketRule(sym, float(entry["step_size"]), float(entry.get("tick_size", 0.0)),
                                  float(entry.get("min_qty", entry["step_size"])),
                                  float(entry.get("min_notional", 5.0)))
    return out
