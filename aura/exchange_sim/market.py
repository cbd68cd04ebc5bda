"""The replay clock and everything public a client can ask about the market.

The clock points at one bar of the union timeline of all loaded symbols.  A symbol is listed once its first
bar has opened and TRADING until its data ends (after that it is in BREAK, as a halted Binance pair is).
Klines and tickers never show a bar after the clock: the simulator has no lookahead either.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from aura.exchange_sim.errors import BinanceError, invalid_symbol, mandatory
from aura.exchange_sim.ledger import fmt
from aura.exchange_sim.market_data import (
    SymbolRules,
    SymbolSeries,
    dec,
    derive_rules,
    infer_interval,
    interval_ms,
    load_rules_file,
    load_series,
    resolve_candle_dir,
    rules_from_mapping,
)

_ORDER_TYPES = ["LIMIT", "MARKET"]


@functools.lru_cache(maxsize=8)
def _cached_series(candle_dir: str, only: frozenset[str] | None) -> dict[str, SymbolSeries]:
    # Read-only arrays, shared by every simulator a test session starts on the same folder.
    return load_series(Path(candle_dir), set(only) if only is not None else None)


def parse_start(start: int | str | None) -> int | None:
    if start is None or start == "":
        return None
    if isinstance(start, int):
        return start
    if start.isdigit():
        return int(start)
    return int(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp() * 1000)


class Market:
    def __init__(self, data_dir: Path, *, timeframe: str = "1d", symbols: tuple[str, ...] | None = None,
                 start: int | str | None = None, rule_overrides: dict[str, dict[str, float]] | None = None,
                 spread_bps: float = 0.0) -> None:
        candle_dir = resolve_candle_dir(Path(data_dir), timeframe)
        only = frozenset(s.replace("/", "").replace("_", "").upper() for s in symbols) if symbols else None
        self.series = _cached_series(str(candle_dir.resolve()), only)
        self.interval = infer_interval(self.series)
        self.interval_ms = interval_ms(self.interval)
        self.timeline = np.unique(np.concatenate([s.ts for s in self.series.values()]))
        start_ms = parse_start(start)
        if start_ms is None:
            self.index = max(0, len(self.timeline) - 366)  # a year of bars left to advance through
        else:
            self.index = max(0, int(np.searchsorted(self.timeline, start_ms, side="right")) - 1)
        self.spread = Decimal(str(spread_bps)) / Decimal(20_000)  # half-spread as a fraction
        self.overrides: dict[str, Decimal] = {}
        file_rules = load_rules_file(candle_dir)
        overrides = {k.replace("/", "").replace("_", "").upper(): v for k, v in (rule_overrides or {}).items()}
        self.rules: dict[str, SymbolRules] = {}
        for sym, s in self.series.items():
            derived = derive_rules(float(s.close[-1]))
            raw = {**file_rules.get(sym, {}), **overrides.get(sym, {})}
            self.rules[sym] = rules_from_mapping(raw, derived) if raw else derived

    # --- clock and prices ---------------------------------------------------------------------------------

    @property
    def clock_ms(self) -> int:
        return int(self.timeline[self.index])

    def advance(self, bars: int = 1) -> None:
        self.index = min(len(self.timeline) - 1, max(0, self.index + bars))
        self.overrides.clear()

    def set_clock(self, ms: int) -> None:
        self.index = max(0, int(np.searchsorted(self.timeline, ms, side="right")) - 1)
        self.overrides.clear()

    def listed(self) -> list[str]:
        return [sym for sym, s in self.series.items() if s.index_at(self.clock_ms) >= 0]

    def series_of(self, symbol: str | None) -> SymbolSeries:
        if not symbol:
            raise mandatory("symbol")
        s = self.series.get(symbol)
        if s is None or s.index_at(self.clock_ms) < 0:
            raise invalid_symbol()
        return s

    def is_trading(self, symbol: str) -> bool:
        s = self.series_of(symbol)
        return self.clock_ms <= int(s.ts[-1])

    def price(self, symbol: str) -> Decimal:
        s = self.series_of(symbol)
        if symbol in self.overrides:
            return self.overrides[symbol]
        return dec(float(s.close[s.index_at(self.clock_ms)]))

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.series_of(symbol)
        if price <= 0:
            raise ValueError("price must be positive")
        self.overrides[symbol] = price

    def on_tick(self, symbol: str, value: Decimal) -> Decimal:
        tick = self.rules[symbol].tick_size
        return max(tick, (value / tick).to_integral_value(rounding=ROUND_HALF_UP) * tick)

    def bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        p = self.price(symbol)
        if not self.spread:
            return p, p
        return self.on_tick(symbol, p * (1 - self.spread)), self.on_tick(symbol, p * (1 + self.spread))

    # --- public endpoints -----------------------------------------------------------------------------------

    def symbol_info(self, symbol: str) -> dict[str, object]:
        s, r = self.series[symbol], self.rules[symbol]
        return {
            "symbol": symbol, "status": "TRADING" if self.is_trading(symbol) else "BREAK",
            "baseAsset": s.base, "baseAssetPrecision": 8, "quoteAsset": s.quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": _ORDER_TYPES, "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False, "cancelReplaceAllowed": False,
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(r.min_price), "maxPrice": fmt(r.max_price),
                 "tickSize": fmt(r.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": fmt(r.min_qty), "maxQty": fmt(r.max_qty),
                 "stepSize": fmt(r.step_size)},
                {"filterType": "NOTIONAL", "minNotional": fmt(r.min_notional), "applyMinToMarket": True,
                 "maxNotional": fmt(Decimal(9_000_000)), "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    def exchange_info(self, symbols: list[str] | None, server_time_ms: int) -> dict[str, object]:
        wanted = symbols if symbols is not None else self.listed()
        infos = []
        for sym in wanted:
            self.series_of(sym)
            infos.append(self.symbol_info(sym))
        return {"timezone": "UTC", "serverTime": server_time_ms,
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                "limit": 6000},
                               {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}],
                "exchangeFilters": [], "symbols": infos}

    def ticker_24h(self, symbol: str) -> dict[str, object]:
        s = self.series_of(symbol)
        i = s.index_at(self.clock_ms)
        last = self.price(symbol)
        bid, ask = self.bid_ask(symbol)
        open_, prev = dec(float(s.open[i])), dec(float(s.close[i - 1] if i > 0 else s.open[i]))
        high, low = max(dec(float(s.high[i])), last), min(dec(float(s.low[i])), last)
        vol = dec(float(s.volume[i]))
        change = last - open_
        pct = (change / open_ * 100).quantize(Decimal("0.001")) if open_ else Decimal(0)
        return {"symbol": symbol, "priceChange": fmt(change), "priceChangePercent": f"{pct}",
                "weightedAvgPrice": fmt(last), "prevClosePrice": fmt(prev), "lastPrice": fmt(last),
                "lastQty": fmt(Decimal(0)), "bidPrice": fmt(bid), "bidQty": fmt(Decimal(1)), "askPrice": fmt(ask),
                "askQty": fmt(Decimal(1)), "openPrice": fmt(open_), "highPrice": fmt(high), "lowPrice": fmt(low),
                "volume": fmt(vol), "quoteVolume": fmt(vol * last), "openTime": int(s.ts[i]),
                "closeTime": int(s.ts[i]) + self.interval_ms - 1, "firstId": -1, "lastId": -1, "count": 0}

    def ticker_price(self, symbol: str) -> dict[str, object]:
        return {"symbol": symbol, "price": fmt(self.price(symbol))}

    def klines(self, symbol: str, interval: str | None, start: int | None, end: int | None,
               limit: int) -> list[list[object]]:
        s = self.series_of(symbol)
        if not interval:
            raise mandatory("interval")
        if interval != self.interval:
            raise BinanceError(-1120, "Invalid interval.")
        last = s.index_at(self.clock_ms)
        if end is not None:
            last = min(last, s.index_at(end))
        first = 0 if start is None else int(np.searchsorted(s.ts, start, side="left"))
        if start is None:
            first = max(0, last - limit + 1)
        rows = []
        for i in range(first, min(last + 1, first + limit)):
            close = self.price(symbol) if i == s.index_at(self.clock_ms) else dec(float(s.close[i]))
            vol = dec(float(s.volume[i]))
            rows.append([int(s.ts[i]), fmt(dec(float(s.open[i]))), fmt(dec(float(s.high[i]))),
                         fmt(dec(float(s.low[i]))), fmt(close), fmt(vol), int(s.ts[i]) + self.interval_ms - 1,
                         fmt(vol * close), 0, "0.00000000", "0.00000000", "0"])
        return rows


def parse_symbols_param(raw: str | None) -> list[str] | None:
    """Binance's ``symbols=["BTCUSDT","ETHUSDT"]`` (a JSON array in the query string)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; legal range is "
                                  "'^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
    return value
