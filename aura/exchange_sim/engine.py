"""The simulated exchange: one spot account, its orders, and fills at the market's prices at the clock.

Everything here is synchronous and guarded by one lock; the HTTP layer calls in from many threads.
Fills are deterministic: prices come from the candles (or a pinned price), partial fills follow the
configured chunk counts, and the only randomness (optional price jitter) comes from a seeded generator.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aura.exchange_sim.candles import CandleStore
from aura.exchange_sim.clock import SimClock, parse_ms
from aura.exchange_sim.config import LIVE_KEYS, SimConfig, check_fee_asset, coerce
from aura.exchange_sim.errors import (
    BinanceError,
    duplicate_order,
    illegal_chars,
    order_does_not_exist,
    unknown_order_sent,
)
from aura.exchange_sim.faults import FaultBook
from aura.exchange_sim.ledger import ZERO, Balances, Order, Trade, floor_to, q8
from aura.exchange_sim.market import Market
from aura.exchange_sim.order_request import read_new_order


class ExchangeSim:
    """The venue: one candle store, one clock, one market over them, one account trading on it."""

    def __init__(self, config: SimConfig | None = None, *, wall_ms: Callable[[], int] | None = None) -> None:
        self.config = config or SimConfig()
        check_fee_asset(self.config.fee_asset)
        self.lock = threading.RLock()
        self.store = CandleStore(self.config.data_dir, self.config.timeframe, self.config.symbols)
        self.market = Market(self.store, timeframe=self.config.timeframe, rule_overrides=self.config.rules,
                             spread_bps=self.config.spread_bps)
        first = parse_ms(self.config.now)
        self.clock = SimClock(self.market.close_of(parse_ms(self.config.start)) if first is None else first,
                              self.config.speed, wall_ms)
        self.market.now = self.clock.now_ms
        initial = {a.upper(): Decimal(str(v)) for a, v in self.config.balances.items()}
        for s in self.market.series.values():
            initial.setdefault(s.base, ZERO)
            initial.setdefault(s.quote, ZERO)
        self.balances = Balances(initial, self.now_ms())
        self.faults = FaultBook()
        self._rng = random.Random(self.config.seed)
        self._orders: dict[int, Order] = {}
        self._by_client: dict[tuple[str, str], Order] = {}
        self._trades: list[Trade] = []
        self._next_order_id = 1
        self._next_trade_id = 1
        self._served_snapshot: dict[str, Any] | None = None

    # --- time ---------------------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The server's time: the simulated clock (plus a skew fault, if any)."""
        return self.clock.now_ms() + self.config.clock_skew_ms

    def tick(self) -> None:
        """Let resting orders see a price bar that closed since the last request (the clock moves by itself)."""
        with self.lock:
            self.market.bar_index()
            if self.market.moved:
                self.market.moved = False
                self._work_all()

    # --- control (tests and /_sim/*) ------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        unknown = set(changes) - LIVE_KEYS
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} at run time; allowed: {sorted(LIVE_KEYS)}")
        if "fee_asset" in changes:
            check_fee_asset(str(changes["fee_asset"]))
        with self.lock:
            for key, value in changes.items():
                setattr(self.config, key, coerce(value, type(getattr(self.config, key))))
            self.market.spread = Decimal(str(self.config.spread_bps)) / Decimal(20_000)

    def set_price(self, symbol: str, price: float | str | Decimal) -> None:
        with self.lock:
            self.market.set_price(symbol, Decimal(str(price)))
            self._work_all()

    def advance(self, bars: int = 1) -> None:
        """Move the clock ``bars`` price bars on (or back), to the close of that bar; the data's ends bound it."""
        with self.lock:
            last = len(self.market.timeline) - 1
            i = min(last, max(0, self.market.bar_index() + bars))
            self.set_clock(int(self.market.timeline[i]))

    def set_clock(self, bar_ms: int) -> None:
        """Make the bar open at (or before) ``bar_ms`` the price bar: the clock jumps to its close."""
        self.set_now(self.market.close_of(bar_ms))

    def set_now(self, now_ms: int) -> None:
        with self.lock:
            self.clock.set(now_ms)
            self.tick()

    def step(self) -> None:
        """Move every working order one chunk on, as a later matching pass on the exchange would."""
        with self.lock:
            self._work_all()

    def set_balance(self, asset: str, free: float | str | Decimal) -> None:
        with self.lock:
            self.balances.set_free(asset.upper(), Decimal(str(free)), self.now_ms())

    def price(self, symbol: str) -> Decimal:
        with self.lock:
            return self.market.price(symbol)

    def free(self, asset: str) -> Decimal:
        with self.lock:
            return self.balances.free.get(asset, ZERO)

    def order_by_client_id(self, symbol: str, client_order_id: str) -> Order | None:
        with self.lock:
            return self._by_client.get((symbol, client_order_id))

    def request_counts(self) -> dict[str, int]:
        """Exchange API requests received so far, per "METHOD /path" (control endpoints not counted)."""
        return self.faults.counts()

    def orders(self) -> list[Order]:
        with self.lock:
            return list(self._orders.values())

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "clock_ms": self.market.clock_ms, "now_ms": self.now_ms(), "speed": self.clock.speed,
                "interval": self.market.interval,
                "prices": {s: str(self.market.price(s)) for s in self.market.listed()},
                "balances": {a: {"free": str(self.balances.free[a]), "locked": str(self.balances.locked[a])}
                             for a in sorted(self.balances.free)},
                "orders": [o.query_json() for o in self._orders.values()],
                "trades": [t.my_trade_json() for t in self._trades],
                "requests": self.faults.counts(), "faults": self.faults.pending(),
            }

    # --- account ----------------------------------------------------------------------------------------------

    def account(self, fault_kind: str | None = None, omit_zero: bool = False) -> dict[str, Any]:
        with self.lock:
            if fault_kind == "stale_balance" and self._served_snapshot is not None:
                return self._served_snapshot
            fee = str(q8(Decimal(str(self.config.fee_rate))))
            balances = self.balances.snapshot()
            if omit_zero:
                balances = [b for b in balances if Decimal(b["free"]) or Decimal(b["locked"])]
            body = {"makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
                    "commissionRates": {"maker": fee, "taker": fee, "buyer": "0.00000000", "seller": "0.00000000"},
                    "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
                    "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self.balances.update_ms,
                    "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 1}
            if fault_kind == "empty_balance":
                return {**body, "balances": []}
            if fault_kind == "stale_balance":  # nothing served yet: the first snapshot is the stale one
                return body
            self._served_snapshot = body
            return body

    # --- orders -------------------------------------------------------------------------------------------------

    def new_order(self, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            return self._new_order(p)

    def _new_order(self, p: dict[str, str]) -> dict[str, Any]:
        req = read_new_order(p, self.market, default_client_id=f"sim{self._next_order_id:020d}")
        symbol, cid, qty = req.symbol, req.client_order_id, req.qty
        known = self._by_client.get((symbol, cid))
        if known is not None and (self.config.duplicate_scope == "all" or not known.is_final):
            raise duplicate_order()
        now = self.now_ms()
        base, quote = self.market.series[symbol].base, self.market.series[symbol].quote
        # A buy locks the quote it will spend, plus the fee only when the fee will be taken in the quote asset.
        fee = Decimal(str(self.config.fee_rate)) if self.config.fee_asset == "quote" else ZERO
        lock_asset, lock_amount = (quote, q8(qty * req.ref_price * (1 + fee))) if req.side == "BUY" else (base, qty)
        self.balances.lock(lock_asset, lock_amount, now)  # raises -2010 insufficient balance
        order = Order(order_id=self._next_order_id, client_order_id=cid, symbol=symbol, side=req.side, type=req.type,
                      time_in_force=req.time_in_force, orig_qty=qty, price=req.price if req.type == "LIMIT" else ZERO,
                      orig_quote_qty=req.quote_qty or ZERO, time_ms=now, update_ms=now, lock_asset=lock_asset,
                      locked=lock_amount)
        self._next_order_id += 1
        self._orders[order.order_id] = order
        self._by_client[(symbol, cid)] = order
        fills_before = len(order.trades)
        if req.type == "LIMIT" and req.time_in_force == "FOK":
            if self._marketable(order):
                while not order.is_final:
                    self._fill_chunk(order, taker=True, whole=True, now=now)
            else:
                self._finish(order, "EXPIRED", now)
        else:
            self._work(order, taker=True, now=now)  # same ms as transactTime, as Binance's first fills are
            if req.type == "LIMIT" and req.time_in_force == "IOC" and not order.is_final:
                self._finish(order, "EXPIRED", now)
        return order.new_order_json(req.resp_type, order.trades[fills_before:])

    def _find(self, p: dict[str, str]) -> Order | None:
        symbol = p.get("symbol", "")
        self.market.series_of(symbol)
        order_id, cid = p.get("orderId"), p.get("origClientOrderId")
        if not order_id and not cid:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were "
                                      "empty/null!")
        if order_id:
            if not order_id.isdigit():
                raise illegal_chars("orderId", "^[0-9]{1,20}$")
            order = self._orders.get(int(order_id))
            return order if order is not None and order.symbol == symbol else None
        return self._by_client.get((symbol, cid or ""))

    def get_order(self, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            order = self._find(p)
            if order is None:
                raise order_does_not_exist()
            if self.config.fill_on_query and not order.is_final:
                self._work(order, taker=False)
            return order.query_json()

    def cancel_order(self, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            order = self._find(p)
            if order is None or order.is_final:
                raise unknown_order_sent()
            self._finish(order, "CANCELED")
            cancel_id = p.get("newClientOrderId") or f"simcancel{order.order_id:016d}"
            return order.cancel_json(cancel_id, self.now_ms())

    def open_orders(self, symbol: str | None) -> list[dict[str, Any]]:
        with self.lock:
            if symbol:
                self.market.series_of(symbol)
            return [o.query_json() for o in self._orders.values()
                    if not o.is_final and (not symbol or o.symbol == symbol)]

    def my_trades(self, p: dict[str, str]) -> list[dict[str, Any]]:
        with self.lock:
            symbol = p.get("symbol", "")
            self.market.series_of(symbol)
            ints = {}
            for name in ("orderId", "fromId", "startTime", "endTime", "limit"):
                raw = p.get(name)
                if raw:
                    if not raw.isdigit():
                        raise illegal_chars(name, "^[0-9]{1,20}$")
                    ints[name] = int(raw)
            limit = ints.get("limit", 500)
            if not 1 <= limit <= 1000:
                raise BinanceError(-1130, "Invalid data sent for a parameter.")
            out = [t for t in self._trades if t.symbol == symbol
                   and ("orderId" not in ints or t.order_id == ints["orderId"])
                   and t.trade_id >= ints.get("fromId", 0)
                   and ints.get("startTime", 0) <= t.time_ms <= ints.get("endTime", 1 << 62)]
            return [t.my_trade_json() for t in out[:limit]]

    # --- matching -----------------------------------------------------------------------------------------------

    def _marketable(self, order: Order) -> bool:
        if order.type == "MARKET":
            return True
        bid, ask = self.market.bid_ask(order.symbol)
        return ask <= order.price if order.side == "BUY" else bid >= order.price

    def _work_all(self) -> None:
        for order in list(self._orders.values()):
            if not order.is_final and self.market.is_trading(order.symbol):
                self._work(order, taker=False)

    def _work(self, order: Order, *, taker: bool, now: int | None = None) -> None:
        now = now if now is not None else self.now_ms()
        if not order.is_final and self._marketable(order):
            self._fill_chunk(order, taker=taker or order.type == "MARKET", whole=False, now=now)
        limit = self.config.market_expire_after_chunks
        if order.type == "MARKET" and not order.is_final and limit and order.chunks_done >= limit:
            self._finish(order, "EXPIRED", now)

    def _fill_chunk(self, order: Order, *, taker: bool, whole: bool, now: int) -> None:
        m = self.market
        rules = m.rules[order.symbol]
        chunks = self.config.market_fill_chunks if order.type == "MARKET" else self.config.limit_fill_chunks
        qty = order.remaining
        if not whole and chunks > 1 and order.chunks_done + 1 < chunks:
            qty = min(qty, floor_to(order.orig_qty / chunks, rules.step_size)) or qty
        bid, ask = m.bid_ask(order.symbol)
        buy = order.side == "BUY"
        if order.type == "LIMIT" and not taker:
            price = order.price  # a resting order fills at its own price
        else:
            price = ask if buy else bid
            if self.config.jitter_bps:
                slip = Decimal(str(self._rng.uniform(0, self.config.jitter_bps))) / Decimal(10_000)
                price = m.on_tick(order.symbol, price * (1 + slip if buy else 1 - slip))
        if buy and order.orig_quote_qty:
            # quoteOrderQty: Binance spends at most that much quote, however far the price walks, and buys fewer
            # coins when it walks up (the lot was sized at the ask when the order came in).  What no longer fits
            # a lot ends the order, FILLED, at the quantity it got, as Binance reports such an order.
            fits = floor_to((order.orig_quote_qty - order.cum_quote) / price, rules.step_size)
            if fits < qty:
                qty = fits
                order.orig_qty = order.executed_qty + qty
            if qty <= 0:
                order.orig_qty = order.executed_qty
                self._finish(order, "FILLED" if order.executed_qty else "EXPIRED", now)
                return
        cost = q8(price * qty)
        rate = Decimal(str(self.config.fee_rate))
        base, quote = m.series[order.symbol].base, m.series[order.symbol].quote
        if buy and self.config.fee_asset == "received":
            # Binance without BNB: a buy's commission is taken from the coins bought (0.1 BTC bought, 0.0999
            # credited), and reported in that asset in myTrades and the order response's fills.
            commission, commission_asset = q8(qty * rate), base
        else:
            commission, commission_asset = q8(cost * rate), quote
        quote_fee = commission if commission_asset == quote else ZERO
        base_fee = commission if commission_asset == base else ZERO
        share = order.locked if qty == order.remaining else q8(order.locked * qty / order.remaining)
        self.balances.unlock(order.lock_asset, share, now)
        order.locked -= share
        if buy:
            if self.balances.free[quote] < cost + quote_fee:
                self._finish(order, "EXPIRED", now)  # the price ran away from the lock: nothing more fills
                return
            self.balances.move(quote, -(cost + quote_fee), now)
            self.balances.move(base, qty - base_fee, now)
        else:
            self.balances.move(base, -(qty + base_fee), now)
            self.balances.move(quote, cost - quote_fee, now)
        trade = Trade(self._next_trade_id, order.order_id, order.symbol, buy, not taker, price, qty, commission,
                      commission_asset, now)
        self._next_trade_id += 1
        self._trades.append(trade)
        order.trades.append(trade)
        order.executed_qty += qty
        order.cum_quote += cost
        order.chunks_done += 1
        order.update_ms = now
        order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
        if order.status == "FILLED" and order.locked:
            self.balances.unlock(order.lock_asset, order.locked, now)
            order.locked = ZERO

    def _finish(self, order: Order, status: str, now: int | None = None) -> None:
        now = now if now is not None else self.now_ms()
        if order.locked:
            self.balances.unlock(order.lock_asset, order.locked, now)
            order.locked = ZERO
        order.status = status
        order.update_ms = now
