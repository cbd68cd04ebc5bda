"""A new order's parameters read and checked as Binance checks them (``POST /api/v3/order``).

Separate from engine.py, which trades: this part only reads the request against the market's rules and prices
and answers with the error Binance would send, in Binance's order of checks, or with the order that was asked
for.  It locks, records and fills nothing; the duplicate check, which needs the account's orders, stays in the
engine and comes after these.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from aura.exchange_sim.errors import CLIENT_ID_RE, BinanceError, filter_failure, illegal_chars, mandatory, parse_decimal
from aura.exchange_sim.ledger import ZERO, floor_to
from aura.exchange_sim.market import Market


@dataclass(frozen=True)
class OrderRequest:
    """A new order that passed every parameter and filter check."""

    symbol: str
    side: str  # "BUY" | "SELL"
    type: str  # "MARKET" | "LIMIT"
    client_order_id: str
    resp_type: str  # "ACK" | "RESULT" | "FULL"
    time_in_force: str  # a market order's is "GTC"
    qty: Decimal
    quote_qty: Decimal | None
    price: Decimal | None  # a limit order's price; None for a market order
    ref_price: Decimal  # what the order is checked and locked at: its limit price, or the touch it takes


def read_new_order(p: dict[str, str], m: Market, default_client_id: str) -> OrderRequest:
    """Check ``p`` as Binance would; ``default_client_id`` names the order when ``newClientOrderId`` is absent."""
    symbol = p.get("symbol", "")
    m.series_of(symbol)
    side, otype = p.get("side", ""), p.get("type", "")
    if not side:
        raise mandatory("side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(-1117, "Invalid side.")
    if not otype:
        raise mandatory("type")
    if otype not in ("MARKET", "LIMIT"):
        raise BinanceError(-1116, "Invalid orderType.")
    cid = p.get("newClientOrderId") or default_client_id
    if not CLIENT_ID_RE.match(cid):
        raise illegal_chars("newClientOrderId", "^[a-zA-Z0-9-_]{1,36}$")
    resp_type = p.get("newOrderRespType", "FULL")
    if resp_type not in ("ACK", "RESULT", "FULL"):
        raise illegal_chars("newOrderRespType", "ACK, RESULT, FULL")
    qty = parse_decimal("quantity", p.get("quantity"))
    quote_qty = parse_decimal("quoteOrderQty", p.get("quoteOrderQty"))
    price = parse_decimal("price", p.get("price"))
    tif = p.get("timeInForce", "")
    if not m.is_trading(symbol):
        raise BinanceError(-1013, "Market is closed.")
    rules = m.rules[symbol]
    bid, ask = m.bid_ask(symbol)
    if otype == "MARKET":
        for extra, value in (("timeInForce", tif), ("price", price)):
            if value:
                raise BinanceError(-1106, f"Parameter '{extra}' sent when not required.")
        if qty is None and quote_qty is None:
            raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were "
                                      "empty/null!")
        if qty is not None and quote_qty is not None:
            raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        if quote_qty is not None and symbol in m.no_quote_orders:
            raise BinanceError(-1013, "Quote order qty market orders are not support.")  # sic: Binance's words
        if qty is None:
            # Binance spends up to quoteOrderQty; here it becomes the largest lot that fits at the ask.
            qty = floor_to(quote_qty / ask, rules.step_size) if quote_qty else ZERO
        ref_price, tif = (ask if side == "BUY" else bid), "GTC"
    else:
        if not tif:
            raise mandatory("timeInForce")
        if tif not in ("GTC", "IOC", "FOK"):
            raise BinanceError(-1115, "Invalid timeInForce.")
        if quote_qty is not None:
            raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        if price is None:
            raise mandatory("price")
        if qty is None:
            raise mandatory("quantity")
        if price < rules.min_price or price > rules.max_price or (price - rules.min_price) % rules.tick_size:
            raise filter_failure("PRICE_FILTER")
        ref_price = price
    if qty < rules.min_qty or qty > rules.max_qty or (qty - rules.min_qty) % rules.step_size:
        raise filter_failure("LOT_SIZE")
    if qty * ref_price < rules.min_notional:
        raise filter_failure("NOTIONAL")
    return OrderRequest(symbol=symbol, side=side, type=otype, client_order_id=cid, resp_type=resp_type,
                        time_in_force=tif, qty=qty, quote_qty=quote_qty, price=price, ref_price=ref_price)
