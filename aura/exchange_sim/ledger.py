"""Orders, trades and balances of the simulated account, and their Binance JSON shapes.

Amounts are Decimals end to end: a balance that drifts by float rounding would make "balance after fills
equals expected" tests meaningless, and Binance itself reports 8-decimal strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from aura.exchange_sim.errors import insufficient_balance

EIGHT = Decimal("0.00000001")
ZERO = Decimal(0)
FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED"})


def q8(value: Decimal) -> Decimal:
    return value.quantize(EIGHT, rounding=ROUND_HALF_EVEN)


def fmt(value: Decimal) -> str:
    return f"{q8(value):.8f}"


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


@dataclass
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    is_buyer: bool
    is_maker: bool
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int

    def fill_json(self) -> dict[str, object]:
        """An entry of the FULL new-order response's ``fills``."""
        return {"price": fmt(self.price), "qty": fmt(self.qty), "commission": fmt(self.commission),
                "commissionAsset": self.commission_asset, "tradeId": self.trade_id}

    def my_trade_json(self) -> dict[str, object]:
        return {"symbol": self.symbol, "id": self.trade_id, "orderId": self.order_id, "orderListId": -1,
                "price": fmt(self.price), "qty": fmt(self.qty), "quoteQty": fmt(self.price * self.qty),
                "commission": fmt(self.commission), "commissionAsset": self.commission_asset,
                "time": self.time_ms, "isBuyer": self.is_buyer, "isMaker": self.is_maker, "isBestMatch": True}


@dataclass
class Order:
    order_id: int
    client_order_id: str
    symbol: str
    side: str  # BUY | SELL
    type: str  # MARKET | LIMIT
    time_in_force: str
    orig_qty: Decimal
    price: Decimal  # limit price; 0 for market orders, as Binance reports it
    orig_quote_qty: Decimal
    time_ms: int
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_ms: int = 0
    lock_asset: str = ""
    locked: Decimal = ZERO  # what this order still holds in its asset's ``locked`` balance
    chunks_done: int = 0
    trades: list[Trade] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def _common(self) -> dict[str, object]:
        return {"symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
                "clientOrderId": self.client_order_id, "price": fmt(self.price), "origQty": fmt(self.orig_qty),
                "executedQty": fmt(self.executed_qty), "cummulativeQuoteQty": fmt(self.cum_quote),
                "status": self.status, "timeInForce": self.time_in_force, "type": self.type, "side": self.side}

    def query_json(self) -> dict[str, object]:
        """GET /api/v3/order and /openOrders entries."""
        return {**self._common(), "stopPrice": fmt(ZERO), "icebergQty": fmt(ZERO), "time": self.time_ms,
                "updateTime": self.update_ms or self.time_ms, "isWorking": True, "workingTime": self.time_ms,
                "origQuoteOrderQty": fmt(self.orig_quote_qty), "selfTradePreventionMode": "EXPIRE_MAKER"}

    def new_order_json(self, resp_type: str, fills: list[Trade]) -> dict[str, object]:
        """POST /api/v3/order, in ACK / RESULT / FULL flavours."""
        ack = {"symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
               "clientOrderId": self.client_order_id, "transactTime": self.time_ms}
        if resp_type == "ACK":
            return ack
        result = {**self._common(), "transactTime": self.time_ms, "workingTime": self.time_ms,
                  "origQuoteOrderQty": fmt(self.orig_quote_qty), "selfTradePreventionMode": "EXPIRE_MAKER"}
        if resp_type == "FULL":
            result["fills"] = [t.fill_json() for t in fills]
        return result

    def cancel_json(self, cancel_client_id: str, now_ms: int) -> dict[str, object]:
        body = self._common()
        body["origClientOrderId"] = self.client_order_id
        body["clientOrderId"] = cancel_client_id
        return {**body, "transactTime": now_ms, "origQuoteOrderQty": fmt(self.orig_quote_qty),
                "selfTradePreventionMode": "EXPIRE_MAKER"}


class Balances:
    """Free and locked amount per asset; ``update_ms`` is when any of them last changed (Binance updateTime)."""

    def __init__(self, initial: dict[str, Decimal], now_ms: int) -> None:
        self.free: dict[str, Decimal] = {a: q8(v) for a, v in initial.items()}
        self.locked: dict[str, Decimal] = {a: ZERO for a in initial}
        self.update_ms = now_ms

    def ensure(self, asset: str) -> None:
        self.free.setdefault(asset, ZERO)
        self.locked.setdefault(asset, ZERO)

    def set_free(self, asset: str, amount: Decimal, now_ms: int) -> None:
        self.ensure(asset)
        self.free[asset] = q8(amount)
        self.update_ms = now_ms

    def lock(self, asset: str, amount: Decimal, now_ms: int) -> None:
        self.ensure(asset)
        if self.free[asset] < amount:
            raise insufficient_balance()
        self.free[asset] -= amount
        self.locked[asset] += amount
        self.update_ms = now_ms

    def unlock(self, asset: str, amount: Decimal, now_ms: int) -> None:
        self.ensure(asset)
        amount = min(amount, self.locked[asset])
        self.locked[asset] -= amount
        self.free[asset] += amount
        self.update_ms = now_ms

    def move(self, asset: str, delta: Decimal, now_ms: int) -> None:
        """Add ``delta`` (may be negative) to free; callers check affordability first."""
        self.ensure(asset)
        self.free[asset] = q8(self.free[asset] + delta)
        self.update_ms = now_ms

    def snapshot(self) -> list[dict[str, str]]:
        return [{"asset": a, "free": fmt(self.free[a]), "locked": fmt(self.locked[a])} for a in sorted(self.free)]
