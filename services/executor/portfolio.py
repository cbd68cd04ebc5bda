"""Portfolio derived from journaled fills only (pure): cash, holdings and average entry prices.

Deriving instead of mutating means a crash can never leave balances and fills disagreeing: whatever
fills the journal holds, the portfolio is exactly their sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DUST = 1e-12


@dataclass(frozen=True)
class Portfolio:
    cash: float
    holdings: dict[str, float]
    entry_prices: dict[str, float]

    def equity(self, marks: dict[str, float]) -> float:
        return self.cash + sum(q * marks.get(s, self.entry_prices.get(s, 0.0)) for s, q in self.holdings.items())


def portfolio_from_fills(initial_cash: float, fills: Iterable[tuple[str, str, float, float, float]]) -> Portfolio:
    """``fills``: (symbol, side, qty, price, fee in quote), in execution order."""
    cash = initial_cash
    qty: dict[str, float] = {}
    cost: dict[str, float] = {}  # quote spent on the open position, for the average entry price
    for symbol, side, q, price, fee in fills:
        if side == "buy":
            cash -= q * price + fee
            qty[symbol] = qty.get(symbol, 0.0) + q
            cost[symbol] = cost.get(symbol, 0.0) + q * price
        else:
            held = qty.get(symbol, 0.0)
            cash += q * price - fee
            if held > DUST:
                cost[symbol] = cost.get(symbol, 0.0) * max(0.0, held - q) / held
            qty[symbol] = held - q
    holdings = {s: round(q, 12) for s, q in sorted(qty.items()) if q > DUST}
    entries = {s: cost[s] / holdings[s] for s in holdings if holdings[s] > 0}
    return Portfolio(cash=round(cash, 8), holdings=holdings, entry_prices=entries)
