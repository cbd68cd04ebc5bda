"""Everything public a client can ask about the market, at the simulator's clock.

The *price bar* is the newest bar of the trading timeframe that has closed at ``now``; a symbol's price is that
bar's close unless a test pinned another one (a pin lasts until the next bar closes).  So the trading API
prices from exactly the candles ingest's providers can fetch.  Klines, tickers, the archive and CoinGecko
never show a candle after the clock: closed candles as they are, the one still forming at ``now`` with only
what is known of it (its open and the current price).  No lookahead anywhere.

A symbol is listed once its first bar has closed and TRADING until its data ends (after that it is in BREAK,
as a halted Binance pair is); ``delisted`` ones are gone from the exchange altogether.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from aura.exchange_sim.candles import Arrays, CandleStore, pair_of
from aura.exchange_sim.clock import wall_clock_ms
from aura.exchange_sim.errors import BinanceError, invalid_symbol, mandatory
from aura.exchange_sim.ledger import fmt
from aura.exchange_sim.market_data import SymbolRules, dec, derive_rules, load_rules_file, rules_from_mapping
from services.ingest.providers.base import interval_ms

_ORDER_TYPES = ["LIMIT", "MARKET"]
_DAY_MS = 86_400_000


def _when(ms: int) -> str:
    """A bar time as an operator typed it: the date alone at midnight (every daily bar), else date and time."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%d") if ms % _DAY_MS == 0 else moment.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class SymbolSeries:
    symbol_id: str  # Binance id, "BTCUSDT"
    stem: str  # file stem, "BTC_USDT"
    base: str
    quote: str
    ts: np.ndarray  # int64 candle open times, ascending
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def index_at(self, bar_ms: int) -> int:
        """Index of the last bar opened at or before ``bar_ms``; -1 before listing."""
        return int(np.searchsorted(self.ts, bar_ms, side="right")) - 1


class Market:
    def __init__(self, store: CandleStore, *, timeframe: str = "1d",
                 rule_overrides: dict[str, dict[str, float]] | None = None, spread_bps: float = 0.0) -> None:
        self.store = store
        self.interval = timeframe
        self.interval_ms = interval_ms(timeframe)
        self.now: Callable[[], int] = wall_clock_ms  # the engine plugs its clock in
        self.spread = Decimal(str(spread_bps)) / Decimal(20_000)  # half-spread as a fraction
        self.overrides: dict[str, Decimal] = {}
        self.delisted: set[str] = set()
        # Pairs whose quoteOrderQtyMarketAllowed is false: a market order by quote amount is refused (-1013), as
        # Binance once refused it on every pair.
        self.no_quote_orders: set[str] = set()
        self.rules: dict[str, SymbolRules] = {}
        self._file_rules = load_rules_file(store.trading_dir)
        self._rule_overrides = {k.replace("/", "").replace("_", "").upper(): v
                                for k, v in (rule_overrides or {}).items()}
        self._version = -1
        self._series: dict[str, SymbolSeries] = {}
        self.timeline = np.empty(0, dtype=np.int64)
        if not self.series:
            raise FileNotFoundError(f"no BASE_QUOTE.parquet candles found in {store.trading_dir}")
        self._bar: int | None = None
        self.moved = False  # the price bar changed since the engine last looked (it re-works resting orders)

    # --- the candles of the trading timeframe ---------------------------------------------------------------

    @property
    def series(self) -> dict[str, SymbolSeries]:
        if self._version != self.store.version:
            self._load()
        return self._series

    def _timeline(self) -> np.ndarray:
        """Every open time of the trading timeframe over all symbols (rebuilt after an override)."""
        if self._version != self.store.version:
            self._load()
        return self.timeline

    def _load(self) -> None:
        self._version = self.store.version
        out = {}
        for stem in self.store.stems(self.interval):
            arr = self.store.arrays(self.interval, stem)
            if arr is None:
                continue
            base, _, quote = stem.partition("_")
            sym = pair_of(stem)
            out[sym] = SymbolSeries(sym, stem, base, quote, arr["timestamp"], arr["open"], arr["high"], arr["low"],
                                    arr["close"], arr["volume"])
            if sym not in self.rules:
                raw = {**self._file_rules.get(sym, {}), **self._rule_overrides.get(sym, {})}
                derived = derive_rules(float(arr["close"][-1]))
                self.rules[sym] = rules_from_mapping(raw, derived) if raw else derived
        self._series = out
        self.timeline = np.unique(np.concatenate([s.ts for s in out.values()])) if out else self.timeline

    # --- clock and prices ---------------------------------------------------------------------------------

    def bar_index(self) -> int:
        """Index in ``timeline`` of the price bar (the newest closed at now); -1 before the first closes."""
        i = int(np.searchsorted(self._timeline(), self.now() - self.interval_ms, side="right")) - 1
        if i != self._bar:
            self._bar, self.moved = i, True
            self.overrides.clear()
        return i

    @property
    def clock_ms(self) -> int:
        """Open time of the price bar."""
        i = self.bar_index()
        return int(self.timeline[i]) if i >= 0 else self.now() - self.interval_ms

    def close_of(self, bar_ms: int | None) -> int:
        """When the bar open at (or before) ``bar_ms`` closes (None: a year before the data ends, or its first bar
        when it holds less): a clock time.  ValueError for a time no bar of the data spans: a start of 2040
        became the last bar, one of 2010 the first, and the simulator ran from a day nobody asked for."""
        timeline = self._timeline()
        if bar_ms is None:
            return int(timeline[max(0, len(timeline) - 366)]) + self.interval_ms
        first, last = int(timeline[0]), int(timeline[-1])
        if not first <= bar_ms < last + self.interval_ms:
            raise ValueError(f"{_when(bar_ms)} is outside the data: its {self.interval} bars open from "
                             f"{_when(first)} to {_when(last)} ({self.store.trading_dir})")
        return int(timeline[int(np.searchsorted(timeline, bar_ms, "right")) - 1]) + self.interval_ms

    def listed(self) -> list[str]:
        bar = self.clock_ms
        return [sym for sym, s in self.series.items() if sym not in self.delisted and s.index_at(bar) >= 0]

    def series_of(self, symbol: str | None) -> SymbolSeries:
        if not symbol:
            raise mandatory("symbol")
        s = self.series.get(symbol)
        if s is None or symbol in self.delisted or s.index_at(self.clock_ms) < 0:
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

    # --- candles as a client sees them ------------------------------------------------------------------------

    def candles(self, timeframe: str, stem: str, start: int, end: int) -> Arrays | None:
        """Rows with ``start <= open < end`` visible now: closed ones as they are, the forming one (if any) with
        its open and the current price only (for other timeframes than the trading one: its open), no volume."""
        now = self.now()
        rows = self.store.between(timeframe, stem, start, min(end, now + 1))
        if rows is None or not len(rows["timestamp"]) or int(rows["timestamp"][-1]) + interval_ms(timeframe) <= now:
            return rows
        o = float(rows["open"][-1])
        p = o
        if timeframe == self.interval:
            with contextlib.suppress(BinanceError):  # its first bar is forming: not listed yet, no price
                p = float(self.price(pair_of(stem)))
        rows = {c: v.copy() for c, v in rows.items()}  # the store's arrays are read-only
        rows["high"][-1], rows["low"][-1], rows["close"][-1], rows["volume"][-1] = max(o, p), min(o, p), p, 0.0
        return rows

    def klines(self, symbol: str, interval: str | None, start: int | None, end: int | None,
               limit: int) -> list[list[object]]:
        s = self.series_of(symbol)
        if not interval:
            raise mandatory("interval")
        if interval not in self.store.timeframes():
            raise BinanceError(-1120, "Invalid interval.")
        rows = self.candles(interval, s.stem, start or 0, (end + 1) if end is not None else 1 << 62)
        if rows is None:
            return []
        cut = slice(0, limit) if start is not None else slice(max(0, len(rows["timestamp"]) - limit), None)
        iv = interval_ms(interval)
        out: list[list[object]] = []
        for t, o, h, lo, c, v in zip(*(rows[k][cut] for k in ("timestamp", "open", "high", "low", "close",
                                                                "volume")), strict=True):
            close, vol = dec(float(c)), dec(float(v))
            out.append([int(t), fmt(dec(float(o))), fmt(dec(float(h))), fmt(dec(float(lo))), fmt(close), fmt(vol),
                        int(t) + iv - 1, fmt(vol * close), 0, "0.00000000", "0.00000000", "0"])
        return out

    # --- symbols and tickers ----------------------------------------------------------------------------------

    def symbol_info(self, symbol: str) -> dict[str, object]:
        s, r = self.series[symbol], self.rules[symbol]
        return {
            "symbol": symbol, "status": "TRADING" if self.is_trading(symbol) else "BREAK",
            "baseAsset": s.base, "baseAssetPrecision": 8, "quoteAsset": s.quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": _ORDER_TYPES, "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": symbol not in self.no_quote_orders,
            "allowTrailingStop": False, "cancelReplaceAllowed": False,
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
