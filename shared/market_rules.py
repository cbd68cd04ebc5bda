"""A venue's market rules and fees as ccxt describes them: the one reading of a ccxt market, shared.

Ingest carries these rules in every live ``DataReady`` (so risk rounds and the executor places by the same
numbers), risk takes the taker fee for its cost gate, and the executor's broker reads the same fields
(``services/executor/brokers/ccxt_broker.py`` ``CcxtBroker._rule``, which ``tests/ingest/test_live_universe.py``
holds equal to :func:`rule_from_ccxt` until it imports this function).  Pure: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from aura.strategy.types import MarketRule

QUOTE = "USDT"  # the account's currency: every pair AURA trades is quoted in it


def in_account_currency(symbol: str) -> bool:
    """Whether ``symbol`` is a 'BASE/USDT' pair: the only kind whose notional is in the currency of every cap and
    of the journal's cash (risk's target check and the executor's plan check ask it alike)."""
    base, _, quote = symbol.partition("/")
    return bool(base) and quote == QUOTE


def _num(*values: Any) -> float:
    """The first value given, as a float; 0.0 when none is (ccxt leaves unknown limits as None)."""
    for v in values:
        if v not in (None, ""):
            return float(v)
    return 0.0


def rule_from_ccxt(symbol: str, market: Mapping[str, Any]) -> MarketRule:
    """Lot step, tick, minimum quantity and notional of one ccxt market.

    The exchange's own filters (Binance's ``LOT_SIZE``, ``PRICE_FILTER``, ``NOTIONAL``/``MIN_NOTIONAL`` in
    ``info``) come first because they are what the matching engine enforces; ccxt's unified ``precision`` and
    ``limits`` stand in on venues that have no such filters.
    """
    filters = {f.get("filterType"): f for f in (market.get("info") or {}).get("filters", []) if isinstance(f, dict)}
    lot, price = filters.get("LOT_SIZE", {}), filters.get("PRICE_FILTER", {})
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
    limits, precision = market.get("limits") or {}, market.get("precision") or {}
    step = _num(lot.get("stepSize"), precision.get("amount"))
    # A market order may be no larger than LOT_SIZE's and MARKET_LOT_SIZE's maxQty (ccxt: limits amount / market
    # max); a larger one is refused (-1013) every time, so an exit held above it would never go out.
    maxes = [m for m in (_num(lot.get("maxQty")), _num(filters.get("MARKET_LOT_SIZE", {}).get("maxQty")),
                         _num((limits.get("amount") or {}).get("max")), _num((limits.get("market") or {}).get("max")))
             if m > 0]
    return MarketRule(symbol=symbol, step_size=step, tick_size=_num(price.get("tickSize"), precision.get("price")),
                      min_qty=_num(lot.get("minQty"), (limits.get("amount") or {}).get("min"), step),
                      min_notional=_num(notional.get("minNotional"), notional.get("notional"),
                                        (limits.get("cost") or {}).get("min")),
                      max_qty=min(maxes) if maxes else math.inf,
                      quote_buys=(market.get("info") or {}).get("quoteOrderQtyMarketAllowed") is not False)


def is_tradable(market: Mapping[str, Any], quote: str | None = None) -> bool:
    """A spot market (in ``quote``, if given) that trades now.

    ccxt sets ``active`` from the venue's status (Binance: ``status == "TRADING"``; ``BREAK`` is a halted or
    delisted pair); ``None`` means the venue does not say, which counts as trading, as in
    ``services/ingest/universe.py``.  A market missing from the list altogether is not tradable either, which
    the callers see as its absence.
    """
    if not market.get("spot") or market.get("active") is False:
        return False
    return quote is None or market.get("quote") == quote


def rules_from_ccxt(markets: Mapping[str, Mapping[str, Any]], quote: str | None = None) -> dict[str, MarketRule]:
    """Rules of every tradable spot market (in ``quote``), by unified symbol ('BTC/USDT')."""
    return {sym: rule_from_ccxt(sym, m) for sym, m in sorted(markets.items()) if is_tradable(m, quote)}


def taker_fee(markets: Mapping[str, Mapping[str, Any]], quote: str | None = None) -> float | None:
    """The venue's taker fee for the tradable spot markets in ``quote``: the highest one, so the cost gate never
    prices a trade cheaper than the venue may charge; None when no market states one.

    With public endpoints this is the venue's published base schedule (ccxt fills ``taker`` per market from it;
    an account's own tier or discount needs its keys, which only the executor holds).
    """
    fees = [float(m["taker"]) for m in markets.values() if is_tradable(m, quote) and m.get("taker") is not None]
    return max(fees) if fees else None
