"""Portfolio derived from journaled fills only (pure): cash, holdings and average entry prices.

Deriving instead of mutating means a crash can never leave balances and fills disagreeing: whatever
fills the journal holds, the portfolio is exactly their sum.

The sum is done in decimal, the way the exchange keeps its books (8-decimal amounts, each trade's quote amount
rounded to 8 decimals), so the journal's cash and holdings equal the exchange's balances exactly rather than
within float noise.  Each fee comes out of the asset it was charged in: a base-asset fee (Binance without a
BNB discount, on a buy) out of the holding, a quote-asset fee out of cash.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, Underflow, localcontext
from typing import NamedTuple

EIGHT = Decimal("0.00000001")
ZERO = Decimal(0)


class FillRow(NamedTuple):
    """A journaled fill as the portfolio needs it (``Journal.all_fills``), in execution order."""

    symbol: str
    side: str  # "buy" | "sell" | "adopt" (an operator's adoption of the exchange's balances, see books.py)
    qty: float  # traded quantity, before any fee (adopt: the change, negative for coins the exchange lacks)
    price: float
    fee_base: float  # fee charged in the base asset: out of the holding
    fee_quote: float  # fee charged in the quote asset: out of cash


@dataclass(frozen=True)
class Portfolio:
    cash: float
    holdings: dict[str, float]
    entry_prices: dict[str, float]

    def equity(self, marks: dict[str, float]) -> float:
        return self.cash + sum(q * marks.get(s, self.entry_prices.get(s, 0.0)) for s, q in self.holdings.items())


def _dec(value: float) -> Decimal:
    # repr is the shortest string that reads back as the same float: for an amount parsed from the exchange's
    # 8-decimal string ("0.09990000" -> 0.0999) it is exactly that decimal again, not the binary approximation.
    return Decimal(repr(float(value)))


def _q8(value: Decimal) -> Decimal:
    return value.quantize(EIGHT, rounding=ROUND_HALF_EVEN)


def portfolio_from_fills(initial_cash: float, fills: Iterable[tuple[str, str, float, float, float, float]]
                         ) -> Portfolio:
    """``fills``: (symbol, side, qty, price, fee in base, fee in quote) rows (:class:`FillRow`), in execution
    order.  A fee paid in a third asset (BNB) is in neither column: the journal does not track BNB."""
    # A context of our own: ccxt sets the thread's decimal context to round half up (and trap underflow), and
    # the sum must not depend on which library ran last in this thread.  40 digits hold any product exactly.
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 40, ROUND_HALF_EVEN
        ctx.traps[Underflow] = False
        return _sum_fills(_dec(initial_cash), fills)


def _sum_fills(cash: Decimal, fills: Iterable[tuple[str, str, float, float, float, float]]) -> Portfolio:
    qty: dict[str, Decimal] = {}
    cost: dict[str, float] = {}  # quote spent on the open position, for the average entry price
    for symbol, side, q, price, fee_base, fee_quote in fills:
        dq, fb = _dec(q), _dec(fee_base)
        if side == "adopt":  # no trade: the operator recorded what the exchange really holds
            if "/" not in symbol:  # the quote asset itself: cash
                cash += dq
                continue
            held = qty.get(symbol, ZERO)
            left = held + dq
            if dq > ZERO:
                cost[symbol] = cost.get(symbol, 0.0) + float(dq) * price
            elif held > ZERO:
                cost[symbol] = cost.get(symbol, 0.0) * float(max(ZERO, left) / held)
            qty[symbol] = left
            continue
        notional = _q8(dq * _dec(price))  # the exchange books each trade's quote amount to 8 decimals
        held = qty.get(symbol, ZERO)
        if side == "buy":
            cash -= notional + _dec(fee_quote)
            qty[symbol] = held + dq - fb
            # The entry price is the price paid per coin, fees excluded whatever asset they were taken in, so it
            # does not shift by the fee rate when the exchange takes the fee from the coins instead of the cash.
            cost[symbol] = cost.get(symbol, 0.0) + float(dq - fb) * price
        else:
            cash += notional - _dec(fee_quote)
            left = held - dq - fb
            if held > ZERO:
                cost[symbol] = cost.get(symbol, 0.0) * float(max(ZERO, left) / held)
            qty[symbol] = left
    holdings = {s: float(_q8(q)) for s, q in sorted(qty.items()) if _q8(q) > ZERO}
    entries = {s: cost[s] / holdings[s] for s in holdings}
    return Portfolio(cash=float(_q8(cash)), holdings=holdings, entry_prices=entries)
