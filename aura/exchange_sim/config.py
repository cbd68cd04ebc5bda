"""What a simulator is started with, and which of it may change while it runs (``configure``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_KEY = "aura-sim-key"
DEFAULT_API_SECRET = "aura-sim-secret"
FEE_ASSETS = ("received", "quote")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """The repo's bundled replay set, else the shared real-data folder beside the repo."""
    bundled = _REPO_ROOT / "data" / "replay"
    if (bundled / "binance" / "1d").is_dir():
        return bundled
    return Path(os.environ.get("AURA_SHARED_DATA", _REPO_ROOT.parent / "shared" / "data"))


@dataclass
class SimConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    timeframe: str = "1d"  # the trading timeframe: prices are its closes; other timeframes are served too
    symbols: tuple[str, ...] | None = None  # None: every file in the data folder
    # The first price bar (ms or ISO date): the clock starts when that bar closes, so the first price is its
    # close.  Default: a year before the data ends.  ``now`` instead sets the clock's first instant exactly.
    start: int | str | None = None
    now: int | str | None = None
    speed: float = 1.0  # x real time; 0 = the clock stands still until set
    balances: dict[str, float | str] = field(default_factory=lambda: {"USDT": 10_000})
    api_key: str = DEFAULT_API_KEY
    api_secret: str = DEFAULT_API_SECRET
    fee_rate: float = 0.001  # of what the fill gives, in the asset named by ``fee_asset``
    # "received": Binance without a BNB discount, the fee comes out of the asset the fill credits (a buy's in
    # the base asset, a sell's in the quote asset).  "quote": always in the quote asset (older simulator
    # behaviour, and what a quote-only venue does).
    fee_asset: str = "received"
    spread_bps: float = 0.0
    jitter_bps: float = 0.0  # seeded random extra slippage against the taker
    seed: int = 0
    market_fill_chunks: int = 1  # >1: a market order fills one chunk now and one per later query/step
    market_expire_after_chunks: int = 0  # >0: after this many chunks the rest EXPIRES (thin book)
    limit_fill_chunks: int = 1
    fill_on_query: bool = True  # GET /order moves a working order one chunk on (the "successive queries")
    duplicate_scope: str = "all"  # "all": any known clientOrderId is a duplicate; "open": only unfinished
    clock_skew_ms: int = 0  # server clock = simulated clock + skew (to provoke -1021)
    rules: dict[str, dict[str, float]] = field(default_factory=dict)  # per-symbol filter overrides


LIVE_KEYS = {"fee_rate", "fee_asset", "spread_bps", "jitter_bps", "market_fill_chunks",
             "market_expire_after_chunks", "limit_fill_chunks", "fill_on_query", "duplicate_scope", "clock_skew_ms"}


def coerce(value: Any, expected: type) -> Any:
    if expected is bool and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return expected(value)


def check_fee_asset(value: str) -> None:
    if value not in FEE_ASSETS:
        raise ValueError(f"fee_asset must be one of {FEE_ASSETS}, got {value!r}")
