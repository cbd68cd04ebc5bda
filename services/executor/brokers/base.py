"""The one interface every broker implements: the paper broker (dry-run) and the generic CCXT broker.

The executor only ever talks to this interface, so idempotency and crash reconciliation are written once.
All methods are coroutines (the executor is one asyncio task handling one plan at a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aura.strategy.types import MarketRule


class BrokerError(Exception):
    """Base class; ``transient`` errors may be retried with the same clientOrderId.  ``sent_at``: when a failed
    order request could have left at the earliest (``time.monotonic()``, set by the broker once its own work
    before the send is done, such as measuring the exchange's clock again); None when the broker does not say."""

    transient = False
    sent_at: float | None = None


class TransientBrokerError(BrokerError):
    """Network error, 5xx, or a read that failed: retry later, nothing is known to have changed."""

    transient = True


class CredentialsRejected(TransientBrokerError):
    """The exchange refused the API key, its signature, the caller's IP or the key's permissions (Binance -1002,
    -1022, -2014, -2015), before anything reached the matching engine.  The environment's fault, not the plan's:
    a revoked or mistyped key, an egress IP off the key's whitelist, or (-2015) a temporary ban.  So a plan
    waits for it like an outage (unacknowledged, /readyz red with the reason) and is never dead-lettered over it:
    once the operator fixes the key it runs, or, past its bar, is refused as stale and journaled."""


class RateLimitedError(TransientBrokerError):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AmbiguousOrderError(TransientBrokerError):
    """The order request was sent but no answer came back: it may or may not exist on the exchange.

    Never resend blindly: look it up by clientOrderId first.
    """


class BookedOrderError(AmbiguousOrderError):
    """The exchange answered the placement (so it booked the order), but reading what it did failed (the trade
    list refused with a 429, a lost response to the fills' read).  The order exists: look it up, never place again,
    even if a lookup answers "not found"."""


class DuplicateOrderError(BrokerError):
    """The exchange already has an order with this clientOrderId: it exists; look it up, never place again."""


class OrderRejectedError(BrokerError):
    """Final rejection (insufficient balance, filter failure, ...). ``code`` is the exchange's code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Fill:
    """One trade of an order.  The fee is kept twice: valued in the quote asset for reporting (``fee``), and
    as the exchange actually took it (``fee_base`` / ``fee_quote``), because that is what moves the balances.

    Binance without a BNB discount charges the fee in the asset *received*: a buy of 0.1 BTC credits 0.0999
    BTC, a sell's fee comes out of the USDT proceeds.  A base-asset fee must come out of the journal's holding,
    not its cash, or the journal believes in coins that do not exist.  A fee paid in a third asset (BNB) is in
    neither field: BNB balances are not tracked by the journal.
    """

    trade_id: str
    symbol: str
    side: str
    qty: float  # the traded quantity (base asset), before any fee
    price: float
    fee: float  # the whole fee valued in the quote asset (a base fee at the fill price), for reporting only
    ts_ms: int
    fee_base: float  # fee charged in the base asset: the holding grows by qty - fee_base on a buy
    fee_quote: float  # fee charged in the quote asset: comes out of cash


@dataclass(frozen=True)
class OrderState:
    client_order_id: str
    exchange_order_id: str
    symbol: str
    side: str
    status: str  # "open" | "partially_filled" | "filled" | "canceled" | "rejected" | "expired"
    qty: float
    filled_qty: float
    avg_price: float
    fills: tuple[Fill, ...] = field(default_factory=tuple)

    @property
    def is_final(self) -> bool:
        return self.status in ("filled", "canceled", "rejected", "expired")


@dataclass(frozen=True)
class Quote:
    """One ticker read of a symbol: the last trade and the top of the book.  A market order trades against the
    book, not the last price: a buy pays at least the ask, a sell gets at most the bid.  0.0 = not given."""

    last: float
    bid: float
    ask: float

    def side_price(self, side: str) -> float:
        """The first price a market order on ``side`` meets: the ask for a buy, the bid for a sell."""
        return self.ask if side == "buy" else self.bid

    @property
    def spread(self) -> float:
        """(ask - bid) / mid; infinite without a two-sided, uncrossed book (nothing safe to trade against)."""
        if not (self.bid > 0 and self.ask >= self.bid):
            return float("inf")
        return (self.ask - self.bid) / ((self.ask + self.bid) / 2.0)


class Broker(Protocol):
    name: str

    async def load_markets(self, reload: bool = False) -> dict[str, MarketRule]:
        """Rules of every tradable market.  ``reload``: ask the exchange again, never a client's cached copy."""
        ...

    def unlisted(self, symbols: Iterable[str]) -> list[str]:
        """Which of ``symbols`` the venue no longer lists, as far as this client already knows (no request)."""
        ...

    async def fetch_free_balances(self) -> dict[str, float]:
        """Free balance per asset ("USDT", "BTC", ...). Raises TransientBrokerError on failure."""
        ...

    async def fetch_prices(self, symbols: list[str]) -> dict[str, float]: ...

    async def fetch_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """Last price and top of book per symbol (what the live price guard trades on); a symbol the exchange
        does not list or price is absent."""
        ...

    async def fetch_time(self) -> int:
        """The venue's clock (ms UTC): what "now" means for the freshness of a plan, never the local clock."""
        ...

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str,
                                 ref_price: float, quote_amount: float | None = None) -> OrderState:
        """Place a market order. ``ref_price`` is what the plan assumed (the paper broker fills around it).
        ``quote_amount`` (buys): spend exactly this much quote instead of buying ``qty`` (Binance
        ``quoteOrderQty``), so the notional cannot exceed what was checked against the caps."""
        ...

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        """The order as the exchange knows it, by clientOrderId; None when the exchange says it does not exist."""
        ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState | None: ...

    async def close(self) -> None: ...
