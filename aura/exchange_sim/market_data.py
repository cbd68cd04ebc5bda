"""Trading rules of the simulated symbols, and exact decimals of the candles' floats.

Rules come from the repo's ``markets.json`` (Binance's published filters) when it lists the symbol, otherwise
they are derived from the price level the way Binance sizes ticks and lots, so every symbol in the data can
trade.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path


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
    # maxQty as Binance's scales with the coin: 9,000,000 BTC-sized lots, more of a coin worth a millionth of a
    # dollar (a flat 9e6 capped a PEPE order at about 13 USDT).
    max_exp = max(6, math.ceil(math.log10(1e9 / p)))
    return SymbolRules(step_size=step, tick_size=_pow10(tick_exp), min_qty=step, max_qty=9 * _pow10(max_exp),
                       min_price=_pow10(tick_exp), max_price=Decimal(10_000_000), min_notional=Decimal(5))


def rules_from_mapping(raw: dict[str, float], fallback: SymbolRules) -> SymbolRules:
    step = dec(raw.get("step_size", fallback.step_size))
    tick = dec(raw.get("tick_size", fallback.tick_size))
    return SymbolRules(step_size=step, tick_size=tick, min_qty=dec(raw.get("min_qty", step)),
                       max_qty=dec(raw.get("max_qty", fallback.max_qty)), min_price=tick,
                       max_price=dec(raw.get("max_price", fallback.max_price)),
                       min_notional=dec(raw.get("min_notional", fallback.min_notional)))
