"""Plain data the decision functions take and return."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Panel:
    """Aligned candles: rows are bar open times (ms UTC, ascending), columns are symbols.

    A missing candle (not listed yet, delisted, exchange gap) is NaN in every price column; nothing is
    forward-filled here, so no decision can ever see an invented price.
    """

    symbols: tuple[str, ...]
    timestamps: np.ndarray  # int64 (T,)
    open: np.ndarray  # float64 (T, N)
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        t, n = len(self.timestamps), len(self.symbols)
        for name in ("open", "high", "low", "close", "volume"):
            arr = getattr(self, name)
            if arr.shape != (t, n):
                raise ValueError(f"panel column {name} has shape {arr.shape}, expected {(t, n)}")

    def upto(self, index: int) -> Panel:
        """The panel as it was known at the close of bar ``index`` (inclusive): no lookahead."""
        s = slice(0, index + 1)
        return Panel(self.symbols, self.timestamps[s], self.open[s], self.high[s], self.low[s],
                     self.close[s], self.volume[s])


@dataclass(frozen=True)
class MarketRule:
    """Exchange trading rules of one symbol (Binance LOT_SIZE / PRICE_FILTER / NOTIONAL filters)."""

    symbol: str
    step_size: float  # quantity must be a multiple of this
    tick_size: float  # price must be a multiple of this
    min_qty: float
    min_notional: float
    max_qty: float = math.inf  # the most one market order may be (LOT_SIZE / MARKET_LOT_SIZE maxQty); inf: unknown
    quote_buys: bool = True  # the venue takes a market buy by quote amount (Binance quoteOrderQtyMarketAllowed)


@dataclass(frozen=True)
class Leg:
    """One order of a rebalance plan.  ``qty`` is already rounded down to the lot step."""

    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    ref_price: float
    reason: str

    @property
    def notional(self) -> float:
        return self.qty * self.ref_price


@dataclass(frozen=True)
class Targets:
    """What the signal stage wants to hold: weights per symbol (sum <= 1, rest is cash).

    ``expected_returns`` (per-bar return forecast per symbol) feeds the cost-benefit gate in ``risk_plan``;
    a producer that cannot carry it leaves it empty and the gate is then skipped (see pipeline.py).
    """

    weights: dict[str, float]
    regime: str
    scores: dict[str, float] = field(default_factory=dict)  # composite score at the decision bar
    expected_returns: dict[str, float] = field(default_factory=dict)
    raw_regime: str = ""  # regime seen on this bar before hysteresis
    breadth: float = float("nan")  # share of the eligible universe above its SMA
