"""Fake Binance spot REST API: the public endpoints ccxt needs for candles and the universe.

* ``/api/v3/klines``: arrays of 12 fields (open time ms, prices/volumes as 8-decimal strings, close time,
  quote volume, trades, taker volumes, "0"), ``startTime``/``endTime`` inclusive on the open time,
  ``limit`` default 500 and max 1000, newest ``limit`` candles when no ``startTime``.  Like the real API
  it also returns the candle still forming at ``now_ms`` (taken from the data as it is).
* ``/api/v3/exchangeInfo``: spot symbols with filters/permissions as the real one lists them.  A symbol
  whose daily data stopped more than a week before ``now_ms`` is ``BREAK`` (what Binance shows for a
  delisted pair); ``delisted`` removes a symbol entirely.
* ``/api/v3/ticker/24hr``: 24h statistics from the last closed daily candle.
* ``/api/v3/ping``, ``/api/v3/time``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.ingest.fakes.market import INTERVALS, MarketData, stem_of_pair
from services.ingest.fakes.server import FakeServer, Reply

_DAY = 86_400_000


def _s(x: float) -> str:
    return f"{x:.8f}"


class FakeBinanceApi(FakeServer):
    def __init__(self, data: MarketData, now_ms: int, *, delisted: set[str] | None = None) -> None:
        super().__init__()
        self.data = data
        self.now_ms = now_ms
        self.delisted = set(delisted or ())  # pairs ("MATICUSDT") gone from exchangeInfo altogether

    def kind_of(self, path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def route(self, path: str, query: dict[str, str], fault: str | None) -> Reply:
        if path == "/api/v3/ping":
            return Reply.json({})
        if path == "/api/v3/time":
            return Reply.json({"serverTime": self.now_ms})
        if path == "/api/v3/klines":
            return self.klines(query)
        if path == "/api/v3/exchangeInfo":
            return Reply.json(self.exchange_info())
        if path == "/api/v3/ticker/24hr":
            return self.ticker_24hr(query)
        return Reply.json({"code": -1, "msg": "not found"}, 404)

    def pairs(self) -> list[str]:
        return [s.replace("_", "") for s in self.data.stems("1d") if s.replace("_", "") not in self.delisted]

    def klines(self, q: dict[str, str]) -> Reply:
        pair, tf = q.get("symbol", ""), q.get("interval", "")
        stem = stem_of_pair(pair)
        if stem is None or pair in self.delisted or self.data.arrays("1d", stem) is None:
            return Reply.json({"code": -1121, "msg": "Invalid symbol."}, 400)
        if tf not in INTERVALS:
            return Reply.json({"code": -1120, "msg": "Invalid interval."}, 400)
        iv = INTERVALS[tf]
        limit = min(int(q.get("limit", 500)), 1000)
        arr = self.data.arrays(tf, stem)
        if arr is None:
            return Reply.json([])
        ts = arr["timestamp"]
        visible = int(np.searchsorted(ts, self.now_ms, side="right"))  # open <= now: includes the forming one
        end = min(visible, int(np.searchsorted(ts, int(q["endTime"]), side="right"))) if "endTime" in q else visible
        if "startTime" in q:
            lo = int(np.searchsorted(ts, int(q["startTime"]), side="left"))
            hi = min(end, lo + limit)
        else:
            hi, lo = end, max(0, end - limit)
        rows = [
            [
                int(ts[i]), _s(arr["open"][i]), _s(arr["high"][i]), _s(arr["low"][i]), _s(arr["close"][i]),
                _s(arr["volume"][i]), int(ts[i]) + iv - 1, _s(arr["volume"][i] * arr["close"][i]), 0,
                _s(0.0), _s(0.0), "0",
            ]
            for i in range(lo, hi)
        ]
        return Reply.json(rows)

    def exchange_info(self) -> dict[str, Any]:
        symbols = []
        for pair in self.pairs():
            arr = self.data.arrays("1d", stem_of_pair(pair) or "")
            last = int(arr["timestamp"][-1]) if arr is not None and len(arr["timestamp"]) else 0
            status = "TRADING" if last >= self.now_ms - 7 * _DAY else "BREAK"
            symbols.append(
                {
                    "symbol": pair, "status": status, "baseAsset": pair[:-4], "baseAssetPrecision": 8,
                    "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                    "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
                    "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000.00000000",
                         "tickSize": "0.00000001"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000000000.00000000",
                         "stepSize": "0.00001000"},
                        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                         "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                    ],
                    "permissions": [], "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
                }
            )
        return {"timezone": "UTC", "serverTime": self.now_ms, "rateLimits": [], "exchangeFilters": [],
                "symbols": symbols}

    def ticker(self, pair: str) -> dict[str, Any] | None:
        stem = stem_of_pair(pair)
        arr = self.data.arrays("1d", stem or "")
        if arr is None:
            return None
        i = int(np.searchsorted(arr["timestamp"], self.now_ms - _DAY, side="right")) - 1  # last closed day
        if i < 0:
            return None
        o, h, lo, c, v = (float(arr[k][i]) for k in ("open", "high", "low", "close", "volume"))
        t = int(arr["timestamp"][i])
        return {
            "symbol": pair, "priceChange": _s(c - o), "priceChangePercent": f"{(c / o - 1) * 100:.3f}",
            "weightedAvgPrice": _s((h + lo + c) / 3), "prevClosePrice": _s(o), "lastPrice": _s(c),
            "lastQty": _s(0.0), "bidPrice": _s(c), "bidQty": _s(1.0), "askPrice": _s(c), "askQty": _s(1.0),
            "openPrice": _s(o), "highPrice": _s(h), "lowPrice": _s(lo), "volume": _s(v),
            "quoteVolume": _s(v * c), "openTime": t, "closeTime": t + _DAY - 1, "firstId": 1, "lastId": 2,
            "count": 2,
        }

    def ticker_24hr(self, q: dict[str, str]) -> Reply:
        if "symbol" in q:
            t = self.ticker(q["symbol"])
            return Reply.json(t) if t else Reply.json({"code": -1121, "msg": "Invalid symbol."}, 400)
        return Reply.json([t for p in self.pairs() if (t := self.ticker(p))])
