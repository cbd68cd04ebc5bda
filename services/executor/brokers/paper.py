"""Paper broker: the dry-run implementation of the Broker interface, with exchange-like behaviour.

Fills market orders immediately at the plan's reference price moved against us by ``slippage_bps``,
charges ``fee_rate`` in USDT on buys and sells alike (``Fill.fee_quote``), and enforces the same rules a
real exchange does (lot step, min quantity, min notional, balance), answering with the same error classes
the CCXT broker raises.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from aura.strategy.rebalance import floor_to_step
from aura.strategy.types import MarketRule
from services.executor.brokers.base import DuplicateOrderError, Fill, OrderRejectedError, OrderState, Quote
from shared.market_rules import QUOTE


def _ledger(amount: float) -> float:
    """Balances kept like an exchange keeps them, to 8 decimals: float sums such as 0.7 - 0.4 =
    0.29999999999999993 must not leave a balance a hair below the lot the journal holds, or a full exit
    would be refused as an overdraft."""
    return round(amount, 8)


def base_asset(symbol: str) -> str:
    return symbol.split("/")[0]


class PaperBroker:
    name = "paper"

    def __init__(self, balances: dict[str, float], rules: dict[str, MarketRule], fee_rate: float,
                 slippage_bps: float) -> None:
        self.balances = dict(balances)  # asset -> free quantity
        self.rules = dict(rules)
        self.fee_rate = fee_rate
        self.slippage = slippage_bps / 10_000.0
        self.prices: dict[str, float] = {}
        self.orders: dict[str, OrderState] = {}

    def unlisted(self, symbols: Iterable[str]) -> list[str]:
        return []  # the paper venue's markets are the bundled rules: nothing is delisted under it

    async def load_markets(self, reload: bool = False) -> dict[str, MarketRule]:
        return dict(self.rules)  # the paper venue's rules never change: nothing to reload

    async def fetch_free_balances(self) -> dict[str, float]:
        return dict(self.balances)

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]:
        return {s: self.prices[s] for s in symbols if s in self.prices}

    async def fetch_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        # No book here: the paper venue fills around the plan's price with its slippage setting.
        return {s: Quote(p, p, p) for s, p in (await self.fetch_prices(symbols)).items()}

    async def fetch_time(self) -> int:
        return int(time.time() * 1000)

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        if client_order_id in self.orders:
            raise DuplicateOrderError(f"Duplicate order sent. ({client_order_id})")
        rule = self.rules.get(symbol)
        if rule is None:
            raise OrderRejectedError(f"Invalid symbol {symbol}", code=-1121)
        price = ref_price * (1 + self.slippage if side == "buy" else 1 - self.slippage)
        if side == "buy" and quote_amount is not None:  # like quoteOrderQty: the largest lot the amount buys
            qty = quote_amount / price
        qty = floor_to_step(qty, rule.step_size)
        notional = qty * price
        if qty < rule.min_qty:
            raise OrderRejectedError("Filter failure: LOT_SIZE", code=-1013)
        if notional < rule.min_notional:
            raise OrderRejectedError("Filter failure: NOTIONAL", code=-1013)
        # Reported with 8 decimals, as an exchange reports a commission: the journal sums the reported amounts.
        fee = _ledger(notional * self.fee_rate)
        asset = base_asset(symbol)
        if side == "buy":
            if _ledger(notional + fee) > self.balances.get(QUOTE, 0.0):
                raise OrderRejectedError("Account has insufficient balance for requested action.", code=-2010)
            self._credit(QUOTE, -(notional + fee))
            self._credit(asset, qty)
        else:
            if _ledger(qty) > self.balances.get(asset, 0.0):
                raise OrderRejectedError("Account has insufficient balance for requested action.", code=-2010)
            self._credit(asset, -qty)
            self._credit(QUOTE, notional - fee)
        trade_id = "pt-" + hashlib.sha256(client_order_id.encode()).hexdigest()[:20]
        # Always charged in the quote asset (cash), unlike Binance without BNB, which takes a buy's fee out of
        # the coins bought: the paper venue's own balances are all that must agree with the journal here.
        fill = Fill(trade_id, symbol, side, qty, price, fee, int(time.time() * 1000), fee_base=0.0, fee_quote=fee)
        state = OrderState(client_order_id, "po-" + trade_id[3:], symbol, side, "filled", qty, qty, price, (fill,))
        self.orders[client_order_id] = state
        return state

    def _credit(self, asset: str, amount: float) -> None:
        self.balances[asset] = _ledger(self.balances.get(asset, 0.0) + amount)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return self.orders.get(client_order_id)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        return self.orders.get(client_order_id)

    async def close(self) -> None:
        return None
