"""The CoinGecko face (public API v3, under ``/coingecko``): coins list, OHLC and market_chart, from the same
candles as every other face, at the same clock.

* ``/api/v3/coins/list``: ``[{"id", "symbol", "name"}]`` for the coins the data has.
* ``/api/v3/coins/{id}/ohlc?vs_currency=usd&days=N``: ``[[close time ms, o, h, l, c], ...]`` - stamped with
  the candle's *close* time like the real one; 4-hour candles for 3-30 days (the 4h data), 4-day candles
  beyond (aggregated from the daily data), plus the still-forming newest candle stamped ``now`` as the real
  API does (with only what is known at ``now``, see ``Market.candles``).  1-2 days would be 30-minute candles,
  which the data does not have: answered 400.
* ``/api/v3/coins/{id}/market_chart?vs_currency=usd&days=N``: ``prices`` / ``market_caps`` /
  ``total_volumes`` pairs, hourly up to 90 days (1h data), daily beyond (1d closes).
* ``/api/v3/ping``.  Unknown coin: 404 ``{"error": "coin not found"}``.

Content faults: ``wrong_shape`` answers OHLC with HTTP 200 and a JSON object instead of rows (what a proxy or
an API change can send): the client must treat it as malformed, not crash.  ``duplicate_conflict`` adds a
second, different row for the close time of the middle OHLC row (same open and low, twice the high, closing
there, so a daily candle built from it differs too): which one is right cannot be known, so neither may be
stored silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aura.exchange_sim.faults import Fault
from aura.exchange_sim.market import Market
from aura.exchange_sim.reply import Response, json_response
from services.ingest.providers.coingecko import COIN_IDS

_H4 = 14_400_000
_DAY = 86_400_000


class CoinGecko:
    PREFIX = "/coingecko"

    def __init__(self, market: Market) -> None:
        self.market = market
        self.store = market.store
        self.ids = {cid: base for base, cid in COIN_IDS.items()}

    def handle(self, path: str, query: dict[str, str], fault: Fault | None) -> Response:
        """Answer ``path`` (without the /coingecko prefix)."""
        kind = fault.kind if fault is not None else None
        parts = path.strip("/").split("/")
        if path == "/api/v3/ping":
            return json_response({"gecko_says": "(V3) To the Moon!"})
        if path == "/api/v3/coins/list":
            have = set(self.store.stems("1d"))
            return json_response([{"id": cid, "symbol": base.lower(), "name": cid.replace("-", " ").title()}
                                  for cid, base in sorted(self.ids.items()) if f"{base}_USDT" in have])
        if len(parts) == 5 and parts[:3] == ["api", "v3", "coins"] and parts[4] in ("ohlc", "market_chart"):
            base = self.ids.get(parts[3])
            if base is None or self.store.arrays("1d", f"{base}_USDT") is None:
                return json_response({"error": "coin not found"}, 404)
            days_raw = query.get("days", "")
            days = 100_000 if days_raw == "max" else int(days_raw) if days_raw.isdigit() else 0
            if days < 1 or query.get("vs_currency", "").lower() != "usd":
                return json_response({"error": "invalid days or vs_currency"}, 400)
            stem = f"{base}_USDT"
            if kind == "wrong_shape":
                return json_response({"status": {"error_code": 10005, "error_message": "sim: not OHLC rows"}})
            return self.ohlc(stem, days, kind) if parts[4] == "ohlc" else self.market_chart(stem, days)
        return json_response({"error": "not found"}, 404)

    def ohlc(self, stem: str, days: int, fault: str | None = None) -> Response:
        if days <= 2:
            return json_response({"error": "sim: no 30-minute candles in the data"}, 400)
        now = self.market.now()
        since = now - days * _DAY
        if days <= 30:
            arr = self.market.candles("4h", stem, since - _H4, now + 1)
            if arr is None:
                return json_response([])
            ts, o, h, lo, c = (arr[k] for k in ("timestamp", "open", "high", "low", "close"))
            size = _H4
        else:
            arr = self.market.candles("1d", stem, since - 4 * _DAY, now + 1)
            if arr is None:
                return json_response([])
            ts, o, h, lo, c = _blocks(arr, 4 * _DAY)
            size = 4 * _DAY
        rows: list[list[Any]] = []
        for i in range(len(ts)):
            close_time = int(ts[i]) + size
            if close_time <= since:
                continue
            # A candle not closed yet is sent stamped with "now", as CoinGecko does for its newest point.
            stamp = close_time if close_time <= now else now
            rows.append([stamp, float(o[i]), float(h[i]), float(lo[i]), float(c[i])])
        if fault == "duplicate_conflict" and rows:
            stamp, op, hi, low, _ = rows[len(rows) // 2]
            rows.insert(len(rows) // 2 + 1, [stamp, op, 2 * hi, low, 2 * hi])
        return json_response(rows)

    def market_chart(self, stem: str, days: int) -> Response:
        now = self.market.now()
        since = now - days * _DAY
        tf = "1h" if days <= 90 else "1d"
        arr = self.store.between(tf, stem, since, now + 1)
        if arr is None:
            return json_response({"prices": [], "market_caps": [], "total_volumes": []})
        step = 3_600_000 if tf == "1h" else _DAY
        # A price point is the close at the end of each candle (closed ones only); volume is a USD figure.
        points = [(int(t) + step, float(c), float(v) * float(c))
                  for t, c, v in zip(arr["timestamp"], arr["close"], arr["volume"], strict=True)
                  if int(t) + step <= now]
        return json_response({
            "prices": [[t, c] for t, c, _ in points],
            "market_caps": [[t, 0.0] for t, _, _ in points],
            "total_volumes": [[t, q] for t, _, q in points],
        })


def _blocks(arr: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, ...]:
    """Aggregate daily candles into epoch-aligned blocks of ``size`` ms (a real OHLC aggregation)."""
    key = arr["timestamp"] - arr["timestamp"] % size
    starts, first = np.unique(key, return_index=True)
    bounds = np.append(first, len(key))
    o = arr["open"][first]
    c = arr["close"][bounds[1:] - 1]
    h = np.maximum.reduceat(arr["high"], first)
    lo = np.minimum.reduceat(arr["low"], first)
    del starts
    return key[first], o, h, lo, c
