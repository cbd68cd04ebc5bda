"""Replay of bundled history as a sequence of cycles: pure slicing, no I/O beyond the initial load.

Cycle ``t`` reveals the candle that opened at ``timestamps[t]`` (closed by the time the cycle runs) and
carries the last ``snapshot_bars`` bars of every symbol listed by then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aura.strategy.types import MarketRule, Panel
from services.ingest.cache import load_panel
from shared.cycles import cycle_id_for


def load_history(root: Path, timeframe: str, exchange: str = "binance") -> Panel:
    """All symbols of ROOT/EXCHANGE/TIMEFRAME/*.parquet on one aligned timeline (NaN where no candle)."""
    panel = load_panel(root, exchange, timeframe)
    if not panel.symbols:
        raise FileNotFoundError(f"no candles under {root / exchange / timeframe}")
    return panel


def load_market_rules(path: Path) -> dict[str, MarketRule]:
    raw = json.loads(path.read_text())
    return {sym: MarketRule(symbol=sym, **spec) for sym, spec in raw.items() if not sym.startswith("_")}


@dataclass(frozen=True)
class ReplayStep:
    index: int
    as_of_ms: int
    cycle_id: str
    snapshot: Panel | None  # None when the snapshot is incomplete
    missing: tuple[str, ...]
    # The market rules announced with the snapshot (replay: markets.json; sync: the venue's); None: none known.
    rules: Mapping[str, MarketRule] | None = None
    reason: str = ""  # why a stale step is stale, when it is not missing candles


def first_index_at_or_after(panel: Panel, start_ms: int) -> int:
    return int(np.searchsorted(panel.timestamps, start_ms, side="left"))


def replay_step(history: Panel, index: int, snapshot_bars: int, timeframe: str) -> ReplayStep:
    """The snapshot for cycle ``index``; incomplete when a listed symbol has no candle at ``index``."""
    as_of = int(history.timestamps[index])
    lo = max(0, index - snapshot_bars + 1)
    window = slice(lo, index + 1)
    listed = ~np.all(np.isnan(history.close[: index + 1]), axis=0)
    present = ~np.isnan(history.close[index])
    # A symbol whose series ended for good is not "missing"; only a listed symbol that still trades later is.
    continues = ~np.all(np.isnan(history.close[index:]), axis=0)
    missing = tuple(s for j, s in enumerate(history.symbols) if listed[j] and continues[j] and not present[j])
    cid = cycle_id_for(timeframe, as_of)
    if missing:
        return ReplayStep(index, as_of, cid, None, missing)
    keep = [j for j in range(len(history.symbols)) if listed[j] and present[j]]
    snap = Panel(tuple(history.symbols[j] for j in keep), history.timestamps[window],
                 history.open[window][:, keep], history.high[window][:, keep], history.low[window][:, keep],
                 history.close[window][:, keep], history.volume[window][:, keep])
    return ReplayStep(index, as_of, cid, snap, ())
