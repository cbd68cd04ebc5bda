"""Binance Spot REST semantics, independent of the HTTP plumbing: routing, parameters, authentication.

Public market data (time, exchangeInfo, tickers, klines of every timeframe the store has) and the signed
trading endpoints, all from the one market at the simulator's clock.  Signed endpoints follow Binance's rules:
``X-MBX-APIKEY`` header, HMAC-SHA256 of the query string concatenated with the form body (without the
``signature`` pair), ``timestamp`` within ``recvWindow`` (default 5000 ms, at most 60000) and never more than
1000 ms ahead of the server clock (see ``SimClock.judge`` for what "in sync" means on a simulated clock).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from aura.exchange_sim.engine import ExchangeSim
from aura.exchange_sim.errors import BinanceError, illegal_chars, internal_error, mandatory
from aura.exchange_sim.faults import Fault
from aura.exchange_sim.ledger import fmt
from aura.exchange_sim.market import parse_symbols_param
from aura.exchange_sim.reply import Response, json_response

log = logging.getLogger("aura.exchange_sim")


def _strip_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if part and not part.startswith("signature="))


def _int_param(p: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise illegal_chars(name, "^[0-9]{1,20}$")
    return int(raw)


Handler = Callable[[dict[str, str], Fault | None], Any]


class BinanceApi:
    def __init__(self, sim: ExchangeSim) -> None:
        self.sim = sim
        # (method, path) -> (handler, signed)
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {
            ("GET", "/api/v3/ping"): (lambda p, f: {}, False),
            ("GET", "/api/v3/time"): (lambda p, f: {"serverTime": self.sim.now_ms()}, False),
            ("GET", "/api/v3/exchangeInfo"): (self._exchange_info, False),
            ("GET", "/api/v3/ticker/24hr"): (self._per_symbol(self.sim.market.ticker_24h), False),
            ("GET", "/api/v3/ticker/price"): (self._per_symbol(self.sim.market.ticker_price), False),
            ("GET", "/api/v3/ticker/bookTicker"): (self._per_symbol(self._book_ticker), False),
            ("GET", "/api/v3/avgPrice"): (self._avg_price, False),
            ("GET", "/api/v3/klines"): (self._klines, False),
            ("GET", "/api/v3/account"): (self._account, True),
            ("POST", "/api/v3/order"): (lambda p, f: self.sim.new_order(p), True),
            ("GET", "/api/v3/order"): (lambda p, f: self.sim.get_order(p), True),
            ("DELETE", "/api/v3/order"): (lambda p, f: self.sim.cancel_order(p), True),
            ("GET", "/api/v3/openOrders"): (lambda p, f: self.sim.open_orders(p.get("symbol")), True),
            # lagging_trades: the trade list has not caught up with the order yet (answered empty).
            ("GET", "/api/v3/myTrades"): (lambda p, f: [] if f is not None and f.kind == "lagging_trades"
                                          else self.sim.my_trades(p), True),
        }
        self.paths = {path for _, path in self.routes}

    def handle(self, method: str, path: str, query: str, body: str, headers: Mapping[str, str],
               fault: Fault | None = None) -> Response:
        """Answer one request; never raises (bad input becomes a Binance error body)."""
        try:
            route = self.routes.get((method, path))
            if route is None:
                if path in self.paths:
                    raise BinanceError(-1020, "This operation is not supported.", status=405)
                raise BinanceError(-1020, "This operation is not supported.", status=404)
            handler, signed = route
            self.sim.tick()
            params = self._params(query, body)
            if signed:
                self._authenticate(query, body, headers, params)
            return json_response(handler(params, fault))
        except BinanceError as exc:
            return json_response(exc.body(), exc.status, exc.headers)
        except Exception:
            log.exception("exchange simulator failed on %s %s", method, path)
            err = internal_error()
            return json_response(err.body(), err.status)

    @staticmethod
    def _params(query: str, body: str) -> dict[str, str]:
        params: dict[str, str] = {}
        for raw in (query, body):
            for key, value in parse_qsl(raw, keep_blank_values=True, errors="replace"):
                if key in params:
                    raise BinanceError(-1101, "Duplicate values for a parameter detected.")
                params[key] = value
        return params

    def _authenticate(self, query: str, body: str, headers: Mapping[str, str], p: dict[str, str]) -> None:
        cfg = self.sim.config
        key = headers.get("x-mbx-apikey", "")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", status=401)
        if not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        signature = p.get("signature", "")
        if not signature:
            raise mandatory("signature")
        if not p.get("timestamp"):
            raise mandatory("timestamp")
        timestamp = _int_param(p, "timestamp") or 0
        payload = (_strip_signature(query) + _strip_signature(body)).encode()
        expected = hmac.new(cfg.api_secret.encode(), payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        recv_window = _int_param(p, "recvWindow", 5000) or 0
        if recv_window > 60_000:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        miss = self.sim.clock.judge(timestamp, recv_window, cfg.clock_skew_ms)
        if miss == "ahead":
            raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if miss:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")

    # --- public handlers ------------------------------------------------------------------------------------

    def _exchange_info(self, p: dict[str, str], fault: Fault | None) -> Any:
        symbols = parse_symbols_param(p.get("symbols"))
        if p.get("symbol"):
            symbols = [p["symbol"]]
        with self.sim.lock:
            return self.sim.market.exchange_info(symbols, self.sim.now_ms())

    def _per_symbol(self, one: Callable[[str], dict[str, object]]) -> Handler:
        def handler(p: dict[str, str], fault: Fault | None) -> Any:
            with self.sim.lock:
                if p.get("symbol"):
                    return one(p["symbol"])
                symbols = parse_symbols_param(p.get("symbols"))
                return [one(s) for s in (symbols if symbols is not None else self.sim.market.listed())]
        return handler

    def _book_ticker(self, symbol: str) -> dict[str, object]:
        bid, ask = self.sim.market.bid_ask(symbol)
        return {"symbol": symbol, "bidPrice": fmt(bid), "bidQty": "1.00000000", "askPrice": fmt(ask),
                "askQty": "1.00000000"}

    def _avg_price(self, p: dict[str, str], fault: Fault | None) -> Any:
        with self.sim.lock:
            price = self.sim.market.price(p.get("symbol", ""))
            return {"mins": 5, "price": fmt(price), "closeTime": self.sim.now_ms()}

    def _klines(self, p: dict[str, str], fault: Fault | None) -> Any:
        limit = min(1000, max(1, _int_param(p, "limit", 500) or 500))
        with self.sim.lock:
            rows = self.sim.market.klines(p.get("symbol", ""), p.get("interval"), _int_param(p, "startTime"),
                                          _int_param(p, "endTime"), limit)
            if fault is not None and fault.kind == "lagging_klines" and rows:
                # Not published yet: every candle that closed within the last interval (and the forming one).
                iv = int(rows[0][6]) + 1 - int(rows[0][0])
                rows = [r for r in rows if int(r[0]) + 2 * iv <= self.sim.now_ms()]
            return rows

    def _account(self, p: dict[str, str], fault: Fault | None) -> Any:
        kind = fault.kind if fault is not None else None
        return self.sim.account(kind, omit_zero=p.get("omitZeroBalances", "").lower() == "true")
