"""ccxt's order and trade answers in the executor's terms: Binance's raw order statuses and ccxt's unified ones,
and a trade as a journal fill (the fee in the asset it was taken from)."""

from __future__ import annotations

import logging
from typing import Any

from services.executor.brokers.base import Fill
from shared.logging import warn

BINANCE_STATUS = {"NEW": "open", "PENDING_NEW": "open", "PARTIALLY_FILLED": "partially_filled", "FILLED": "filled",
                  "CANCELED": "canceled", "PENDING_CANCEL": "open", "REJECTED": "rejected", "EXPIRED": "expired",
                  "EXPIRED_IN_MATCH": "expired"}
UNIFIED_STATUS = {"closed": "filled", "canceled": "canceled", "cancelled": "canceled", "expired": "expired",
                  "rejected": "rejected"}


def fill_of(sym: str, order: dict[str, Any], trade: dict[str, Any], order_ts: int, log: logging.Logger) -> Fill:
    """One ccxt trade of ``order`` as the journal's fill, its fee kept in the asset it was taken from."""
    price, qty = float(trade.get("price") or 0.0), float(trade.get("amount") or 0.0)
    base, quote = sym.split("/")[0], sym.split("/")[-1].split(":")[0]
    # Keep the fee in the asset it was taken from: Binance takes a buy's fee out of the coins bought, and a
    # journal that charged it to cash instead would hold coins the account does not have.
    fee_base = fee_quote = 0.0
    for fee in trade.get("fees") or ([trade["fee"]] if trade.get("fee") else []):
        cost, currency = float(fee.get("cost") or 0.0), fee.get("currency")
        if currency == quote:
            fee_quote += cost
        elif currency == base:
            fee_base += cost
        elif cost:
            # e.g. paid in BNB: the journal does not track BNB balances, so this fee moves neither its cash
            # nor its holdings, and there is no price for it here; say so rather than under-report silently.
            warn(log, "BROKER", "fee in a third currency not converted", currency=currency, cost=cost)
    return Fill(trade_id=str(trade.get("id") or ""), symbol=sym, side=str(trade.get("side") or order.get("side")),
                qty=qty, price=price, fee=fee_quote + fee_base * price,
                ts_ms=int(trade.get("timestamp") or order_ts or 0), fee_base=fee_base, fee_quote=fee_quote)


def short_of(trades: list[dict[str, Any]], filled: float) -> bool:
    """Whether ``trades`` add up to less than ``filled`` (beyond the exchange's 8-decimal rounding)."""
    return sum(float(t.get("amount") or 0.0) for t in trades) < filled - max(1e-9, filled * 1e-9)
