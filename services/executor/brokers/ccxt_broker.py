"""The generic CCXT broker: real exchanges (Binance by default), their testnets, or the local simulator.

Money safety lives in the error mapping.  Whatever happens after an order request has left this process and
no clear answer came back (timeout, dropped connection, 5xx, "execution status unknown") is
:class:`AmbiguousOrderError`: the order may exist, so the caller must look it up by clientOrderId before
anything else.  Only an explicit exchange verdict (an error code) is a final :class:`OrderRejectedError`.
Binance error codes are read from the response body first and ccxt's exception class second, because ccxt
maps the same code differently by URL (e.g. -1021 is ``BadRequest`` on api.binance.com but ``InvalidNonce``, a
network error, elsewhere) and maps "Duplicate order sent." to a plain ``InvalidOrder``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import ccxt

from aura.strategy.types import MarketRule
from services.executor.brokers.base import (
    AmbiguousOrderError,
    BookedOrderError,
    BrokerError,
    CredentialsRejected,
    DuplicateOrderError,
    OrderRejectedError,
    OrderState,
    Quote,
    RateLimitedError,
    TransientBrokerError,
)
from services.executor.brokers.ccxt_client import (
    AUTH_CODES,
    UNKNOWN_OUTCOME_CODES,
    exchange_code,
    is_not_found,
    make_ccxt_exchange,
)
from services.executor.brokers.ccxt_fills import BINANCE_STATUS, UNIFIED_STATUS, fill_of, short_of
from shared.logging import info, register_secret, warn
from shared.market_rules import QUOTE, rules_from_ccxt

_BINANCE_LIKE = {"binance", "binanceus"}
TRADES_PAGE = 1000  # Binance myTrades' largest page


class CcxtBroker:
    def __init__(self, exchange_id: str = "binance", *, api_key: str = "", secret: str = "",
                 base_url: str | None = None, timeout_ms: int = 10_000, enable_rate_limit: bool = True,
                 adjust_for_time_difference: bool = True, testnet: bool = False,
                 options: dict[str, Any] | None = None, logger: logging.Logger | None = None) -> None:
        register_secret(api_key)
        register_secret(secret)
        self.name = f"ccxt:{exchange_id}"
        self.exchange_id = exchange_id
        self.log = logger or logging.getLogger("aura.executor.ccxt")
        self.exchange = make_ccxt_exchange(exchange_id, api_key=api_key, secret=secret, base_url=base_url,
                                           timeout_ms=timeout_ms, enable_rate_limit=enable_rate_limit,
                                           adjust_for_time_difference=adjust_for_time_difference,
                                           testnet=testnet, options=options)
        self._binance = exchange_id in _BINANCE_LIKE
        # Balances can never predate a fill we have seen; an account snapshot older than that is stale.
        self._balance_floor_ms = 0
        # ccxt measures the offset to the exchange's clock once, with the markets.  A clock stepped since (NTP)
        # makes every signed request -1021 until it is measured again: set by map_error, cleared by _gate.
        self._clock_suspect = False
        self._quiet_until = 0.0  # time.monotonic() before which no request is sent (the exchange's Retry-After)
        # Pairs whose orders the exchange refused as "Market is closed" (halted, BREAK) since the markets were
        # read: unlisted() names them, so the next plan reads the rules again and skips the pair (rules leave
        # halted markets out) instead of sending it to be refused again at every risk tick until the daily read.
        self._closed: set[str] = set()

    async def _gate(self, signed: bool = True) -> None:
        """Before a request.  None while the exchange's Retry-After runs, whatever loop asks (Binance turns a
        client that keeps sending during a 429 into an IP ban, 418, and lengthens it): refused here, unsent.
        Before a signed one, the offset to the exchange's clock measured again if the last request was refused
        for its timestamp (a failure leaves it to the next request; the request itself then says why)."""
        left = self._quiet_until - time.monotonic()
        if left > 0:
            raise RateLimitedError(f"the exchange asked for quiet: {left:.1f} s of its Retry-After left (not sent)",
                                   retry_after_s=left)
        if not signed or not self._clock_suspect or not self.exchange.options.get("adjustForTimeDifference"):
            return
        try:
            await self.exchange.load_time_difference()
        except Exception as exc:
            warn(self.log, "CLOCK", "could not measure the exchange's clock again", error=str(exc)[:200])
            return
        self._clock_suspect = False
        info(self.log, "CLOCK", "offset to the exchange's clock measured again after a timestamp refusal",
             offset_ms=self.exchange.options.get("timeDifference"))

    # --- error mapping -----------------------------------------------------------------------------------------

    def _retry_after(self) -> float:
        headers = getattr(self.exchange, "last_response_headers", None) or {}
        for key, value in headers.items():
            if str(key).lower() == "retry-after":
                try:
                    return max(0.0, float(value))
                except (TypeError, ValueError):
                    break
        return 1.0

    def _code(self, exc: BaseException) -> int | None:
        """The exchange's code from the message, else from the last body if it is this error's body.

        ccxt quotes only ``msg`` for errors it maps by message (e.g. insufficient balance), so the code has to
        come from the raw body; matching the ``msg`` makes sure it is not some other request's answer.
        """
        code = exchange_code(exc)
        if code is not None:
            return code
        try:
            body = json.loads(getattr(self.exchange, "last_http_response", None) or "null")
        except (TypeError, ValueError):
            return None
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body.get("msg") and \
                str(body["msg"]) in str(exc):
            return int(body["code"])
        return None

    def map_error(self, exc: BaseException, *, placing: bool) -> BrokerError:
        """Translate a ccxt (or transport) exception; ``placing`` = it came from an order-creating request."""
        code, text = self._code(exc), str(exc)
        if isinstance(exc, ccxt.DuplicateOrderId) or "Duplicate order sent" in text:
            return DuplicateOrderError(text)
        if code in AUTH_CODES or (code is None and isinstance(exc, ccxt.AuthenticationError)):
            return CredentialsRejected(f"exchange rejected the credentials: {text}")
        if code in (-1003, -1015) or isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
            retry_after = self._retry_after()
            self._quiet_until = max(self._quiet_until, time.monotonic() + retry_after)
            return RateLimitedError(text, retry_after_s=retry_after)
        if code == -1021 or isinstance(exc, ccxt.InvalidNonce):
            self._clock_suspect = True  # the next signed request measures the offset again (_gate)
            return TransientBrokerError(f"request timestamp outside the exchange's recvWindow: {text}")
        if code in UNKNOWN_OUTCOME_CODES or isinstance(exc, ccxt.NetworkError | ccxt.OperationFailed):
            return AmbiguousOrderError(text) if placing else TransientBrokerError(text)
        if isinstance(exc, ccxt.InsufficientFunds | ccxt.InvalidOrder | ccxt.BadRequest) or (
                code is not None and isinstance(exc, ccxt.ExchangeError)):
            return OrderRejectedError(text, code=code) if placing else BrokerError(text)
        # No verdict from the exchange (ccxt wrapped a transport error, or something unexpected).
        return AmbiguousOrderError(text) if placing else TransientBrokerError(text)

    # --- symbols and markets ---------------------------------------------------------------------------------------

    async def _markets(self, reload: bool = False) -> dict[str, Any]:
        if reload or not self.exchange.markets:  # else ccxt answers from its cache: nothing is sent
            await self._gate(signed=False)
        try:
            markets = await self.exchange.load_markets(reload)
        except Exception as exc:
            raise self.map_error(exc, placing=False) from exc
        if reload:
            self._closed.clear()
        return markets

    async def _symbol(self, symbol: str) -> str:
        """Accept "BTC/USDT", "BTC_USDT" or the exchange id "BTCUSDT"; return ccxt's unified symbol."""
        markets = await self._markets()
        if symbol in markets:
            return symbol
        candidate = symbol.replace("_", "/")
        if candidate in markets:
            return candidate
        by_id = self.exchange.markets_by_id or {}
        if symbol in by_id:
            return by_id[symbol][0]["symbol"]
        raise OrderRejectedError(f"unknown symbol {symbol!r} on {self.exchange_id}", code=-1121)

    def unlisted(self, symbols: Iterable[str]) -> list[str]:
        """Which of ``symbols`` the markets as last read no longer list (no request: a read that found a pair
        delisted has read them again)."""
        markets = self.exchange.markets
        if not markets:
            return []
        return [s for s in symbols if (s not in markets and s.replace("_", "/") not in markets)
                or s.replace("_", "/") in self._closed]

    async def load_markets(self, reload: bool = False) -> dict[str, MarketRule]:
        # reload=True: ccxt asks the exchange again and replaces its cache, which _symbol and the order
        # precision read too, so a pair listed since the last read can also be placed.  Only pairs quoted in the
        # account's currency: every cap and the journal's cash are in it (an ETH/BTC leg once spent BTC against
        # AURA_MAX_ORDER_USDT as if it were USDT).
        return rules_from_ccxt(await self._markets(reload), QUOTE)

    # --- reads -------------------------------------------------------------------------------------------------------

    async def fetch_free_balances(self) -> dict[str, float]:
        await self._gate()
        try:
            balance = await self.exchange.fetch_balance()
        except Exception as exc:
            raise self.map_error(exc, placing=False) from exc
        raw = balance.get("info") if isinstance(balance.get("info"), dict) else {}
        if self._binance and raw.get("balances") == []:
            # Binance lists every asset, zero or not: an empty list is a glitch, not an empty account.
            raise TransientBrokerError("exchange returned an empty balance list")
        updated = int(raw.get("updateTime") or 0)
        if updated and updated < self._balance_floor_ms:
            raise TransientBrokerError(f"stale balance snapshot (updateTime {updated} < last fill "
                                       f"{self._balance_floor_ms})")
        self._balance_floor_ms = max(self._balance_floor_ms, updated)
        free = balance.get("free") or {}
        return {asset: float(v) for asset, v in free.items() if v is not None}

    async def _tickers(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        """One ticker request for ``symbols``: each asked symbol's ccxt ticker; unlisted or unpriced ones absent."""
        for attempt in (1, 2):
            unified: dict[str, str] = {}
            for asked in symbols:
                try:
                    unified[asked] = await self._symbol(asked)
                except OrderRejectedError:
                    continue
            if not unified:
                return {}
            await self._gate(signed=False)
            try:
                tickers = await self.exchange.fetch_tickers(sorted(set(unified.values())))
                break
            except Exception as exc:
                if attempt == 1 and self._code(exc) == -1121:
                    # One pair delisted since the markets were read makes the exchange refuse the whole request
                    # ("Invalid symbol"): read the markets again (it drops out) and ask once more, so a coin
                    # nobody trades any more never stops the price reads of the others.
                    warn(self.log, "MARKETS", "a pair asked for is no longer listed; markets read again",
                         error=str(exc)[:200])
                    await self._markets(reload=True)
                    continue
                raise self.map_error(exc, placing=False) from exc
        # never invent a price: a ticker without a last trade is absent
        return {asked: t for asked, sym in unified.items() if (t := tickers.get(sym) or {}).get("last")}

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]:
        """Last price per symbol; a symbol the exchange does not list or price is simply absent."""
        return {asked: float(t["last"]) for asked, t in (await self._tickers(symbols)).items()}

    async def fetch_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """Last price, best bid and best ask per symbol, from the same ticker read (Binance's 24h ticker carries
        the book's top); a missing bid or ask is 0.0, which the price guard refuses to trade against."""
        return {asked: Quote(float(t["last"]), float(t.get("bid") or 0.0), float(t.get("ask") or 0.0))
                for asked, t in (await self._tickers(symbols)).items()}

    async def fetch_bar(self, symbols: list[str], timeframe: str, bar_ms: int) -> dict[str, tuple[float, float]]:
        """Each symbol's (close, base volume) in its ``timeframe`` candle that opened at ``bar_ms``, as the exchange
        publishes it (public klines); a symbol without that candle is absent."""
        out: dict[str, tuple[float, float]] = {}
        for asked in symbols:
            try:
                sym = await self._symbol(asked)
            except OrderRejectedError:
                continue
            await self._gate(signed=False)
            try:
                rows = await self.exchange.fetch_ohlcv(sym, timeframe, since=bar_ms, limit=1)
            except Exception as exc:
                raise self.map_error(exc, placing=False) from exc
            if rows and int(rows[0][0]) == bar_ms and rows[0][4] is not None and rows[0][5] is not None:
                out[asked] = (float(rows[0][4]), float(rows[0][5]))
        return out

    # --- orders ----------------------------------------------------------------------------------------------------

    async def fetch_time(self) -> int:
        await self._gate(signed=False)
        try:
            return int(await self.exchange.fetch_time())
        except Exception as exc:
            raise self.map_error(exc, placing=False) from exc

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        sym = await self._symbol(symbol)
        if side not in ("buy", "sell"):
            raise OrderRejectedError(f"bad side {side!r}")
        params = {"newClientOrderId": client_order_id} if self._binance else {"clientOrderId": client_order_id}
        by_cost = side == "buy" and quote_amount is not None and bool(self.exchange.has.get(
            "createMarketBuyOrderWithCost"))
        try:
            amount = float(self.exchange.amount_to_precision(sym, qty))
            cost = float(self.exchange.cost_to_precision(sym, quote_amount)) if by_cost else None
        except ccxt.BaseError as exc:  # below one lot step: never sent
            raise OrderRejectedError(f"{sym} qty {qty} / cost {quote_amount} rounds to nothing: {exc}") from exc
        info(self.log, "BROKER", "placing market order", symbol=sym, side=side, qty=amount, quote_amount=cost,
             client_order_id=client_order_id, ref_price=ref_price)
        await self._gate()  # may take seconds (the clock measured again): the request is signed after it
        sent_at = time.monotonic()
        try:
            if cost is not None:
                # Spend exactly ``cost`` (Binance quoteOrderQty): the notional is what the caps were checked on,
                # whatever the price does between our price read and the match.
                order = await self.exchange.create_market_buy_order_with_cost(sym, cost, params)
            else:
                # price=None on purpose: with a price ccxt turns a Binance market buy into a quoteOrderQty order.
                order = await self.exchange.create_order(sym, "market", side, amount, None, params)
        except Exception as exc:
            mapped = self.map_error(exc, placing=True)
            mapped.sent_at = self._signed_by(sent_at)
            if isinstance(mapped, OrderRejectedError) and "market is closed" in str(exc).lower():
                self._closed.add(sym)
            warn(self.log, "BROKER", "market order failed", symbol=sym, client_order_id=client_order_id,
                 error=type(mapped).__name__, detail=str(exc)[:300])
            raise mapped from exc
        try:
            state = await self._state(sym, order, client_order_id, fills_from_order=True)
        except BrokerError as exc:
            # The exchange booked the order (it answered the placement); only reading its fills failed.  Never
            # "not sent" (a 429 on the trade list once made the caller send it again, and Binance refuses a
            # duplicate id only while the first order is open): the caller looks it up by its id.
            booked = BookedOrderError(f"order {client_order_id} placed; reading its fills failed: {exc}")
            booked.sent_at = sent_at
            raise booked from exc
        info(self.log, "BROKER", "market order answered", symbol=sym, client_order_id=client_order_id,
             status=state.status, filled_qty=state.filled_qty, avg_price=state.avg_price)
        return state

    def _signed_by(self, called_at: float) -> float:
        """When a request that failed could have been signed, on the monotonic clock: ccxt stamps
        ``lastRestRequestTimestamp`` (wall ms) just before it signs, after its rate limiter's wait, which the
        call's start (``called_at``) does not include.  It is this instance's newest request: a later one signed
        meanwhile only makes the settle window longer."""
        last_ms = self.exchange.lastRestRequestTimestamp or 0
        ago_s = max(0.0, time.time() * 1000.0 - last_ms) / 1000.0
        return max(called_at, time.monotonic() - ago_s)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        sym = await self._symbol(symbol)
        await self._gate()
        try:
            order = await self.exchange.fetch_order("", sym, self._lookup_params(client_order_id))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise self.map_error(exc, placing=False) from exc
        return await self._state(sym, order, client_order_id, fills_from_order=False)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        sym = await self._symbol(symbol)
        await self._gate()
        try:
            order = await self.exchange.cancel_order("", sym, self._lookup_params(client_order_id))
        except Exception as exc:
            if is_not_found(exc):  # unknown, or already final (Binance says -2011 for a filled order)
                return await self.fetch_order(sym, client_order_id)
            raise self.map_error(exc, placing=False) from exc
        return await self._state(sym, order, client_order_id, fills_from_order=False)

    async def close(self) -> None:
        await self.exchange.close()

    def _lookup_params(self, client_order_id: str) -> dict[str, str]:
        return {"origClientOrderId": client_order_id} if self._binance else {"clientOrderId": client_order_id}

    # --- order conversion -------------------------------------------------------------------------------------------

    async def _state(self, sym: str, order: dict[str, Any], client_order_id: str, *,
                     fills_from_order: bool) -> OrderState:
        raw = order.get("info") or {}
        status = BINANCE_STATUS.get(str(raw.get("status", "")).upper())
        filled = float(order.get("filled") or 0.0)
        if status is None:
            unified = str(order.get("status") or "open")
            status = UNIFIED_STATUS.get(unified, "partially_filled" if filled > 0 else "open")
        trades = (order.get("trades") or []) if fills_from_order else []
        if filled > 0 and short_of(trades, filled):  # an answer without its fills (RESULT), or a lookup
            trades = await self._order_trades(sym, str(order.get("id")), int(order.get("timestamp") or 0) or None)
        if filled > 0 and short_of(trades, filled) and status in ("filled", "canceled", "expired"):
            # The trade list lags the order.  Final with fills short, the intent would close for good with coins
            # (and their cost) the journal never sees, and the plan's budget would not count them: it stays
            # working here, so it is looked up again until every fill is there.
            warn(self.log, "BROKER", "order's trades fall short of its filled quantity; looked up again",
                 symbol=sym, client_order_id=client_order_id, filled=filled,
                 trades=sum(float(t.get("amount") or 0.0) for t in trades), exchange_status=status)
            status = "partially_filled"
        ts = int(order.get("lastTradeTimestamp") or order.get("timestamp") or 0)
        fills = tuple(fill_of(sym, order, t, ts, self.log) for t in trades)
        if filled > 0 or status == "canceled":
            self._balance_floor_ms = max(self._balance_floor_ms, max([ts, *(f.ts_ms for f in fills)]))
        cost = float(order.get("cost") or 0.0)
        avg = float(order.get("average") or 0.0) or (cost / filled if filled else 0.0)
        # Always our id: we placed or looked the order up by it, and Binance's cancel answer carries the
        # *cancel request's* clientOrderId (the original is in origClientOrderId), which would orphan fills.
        return OrderState(client_order_id=client_order_id,
                          exchange_order_id=str(order.get("id") or ""), symbol=sym,
                          side=str(order.get("side") or ""), status=status,
                          qty=float(order.get("amount") or 0.0), filled_qty=filled, avg_price=avg, fills=fills)

    async def _order_trades(self, sym: str, order_id: str, since: int | None = None) -> list[dict[str, Any]]:
        """Every trade of the order.  Binance answers myTrades a page at a time (500 by default, at most
        ``TRADES_PAGE``): an order matched in more pieces than one page was journaled short, its intent final,
        so the pages are read on (``fromId`` after the last one) until one comes back short."""
        # fromId from the first page on: without it Binance answers the most recent trades, not the oldest.
        params: dict[str, Any] = {"orderId": order_id, "fromId": 0} if self._binance else {}
        limit = TRADES_PAGE if self._binance else None
        # Elsewhere the trade list is asked from the order's own time: its default window may end before it.
        since = None if self._binance else since
        found: dict[str, dict[str, Any]] = {}
        while True:
            await self._gate()
            try:
                page = await self.exchange.fetch_my_trades(sym, since, limit, params)
            except Exception as exc:
                raise self.map_error(exc, placing=False) from exc
            before = len(found)
            found.update((str(t.get("id")), t) for t in page if str(t.get("order")) == order_id)
            if limit is None or len(page) < limit or len(found) == before:  # the last page, or one that added nothing
                return list(found.values())
            params = {"orderId": order_id, "fromId": max(int(t["id"]) for t in page) + 1}
