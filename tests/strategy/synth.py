"""Small synthetic panels for unit tests (deterministic; seeded generators only)."""

from __future__ import annotations

import numpy as np

from aura.strategy.types import MarketRule, Panel

DAY_MS = 86_400_000
T0 = 1_600_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight


def panel_from_closes(closes: dict[str, np.ndarray], volume: float = 1e7, start_ms: int = T0,
                      bar_ms: int = DAY_MS) -> Panel:
    """Panel whose open = previous close, high/low = +-1% around max/min(open, close); NaN stays NaN."""
    syms = tuple(closes)
    close = np.column_stack([np.asarray(closes[s], dtype=np.float64) for s in syms])
    t_len = close.shape[0]
    opn = np.vstack([close[:1], close[:-1]])
    opn = np.where(np.isnan(opn), close, opn)
    high = np.fmax(opn, close) * 1.01
    low = np.fmin(opn, close) * 0.99
    vol = np.where(np.isnan(close), np.nan, volume)
    ts = start_ms + bar_ms * np.arange(t_len, dtype=np.int64)
    return Panel(syms, ts, opn, high, low, close, vol)


def random_walks(symbols: list[str], t_len: int, seed: int, drift: float = 0.001, vol: float = 0.03,
                 ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in enumerate(symbols):
        steps = rng.normal(drift * (1 + 0.5 * k), vol, t_len)
        out[s] = 100.0 * np.exp(np.cumsum(steps))
    return out


def rules_for(symbols: tuple[str, ...] | list[str], step: float = 1e-6, min_notional: float = 5.0,
              ) -> dict[str, MarketRule]:
    return {s: MarketRule(s, step, 0.01, step, min_notional) for s in symbols}
