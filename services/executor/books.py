"""The journal never silently disagrees with the exchange: both books compared, in both directions (live mode).

The sync guard (``runner.verify_holdings``) stops a plan when the exchange holds *less* than the journal (by more
than dust, valued as here). This module catches the other direction too: coins the journal does not know (a lost
WAL, a manual buy, a deposit) and a journal that is empty while the exchange holds coins. Either halts trading
([RECONCILE], /readyz red) until the operator runs ``aura journal adopt``: the executor then records the exchange's
balances, at the exchange's prices, as an ``adopt`` entry of the journal (an event with what changed and why), never
as a silent new genesis. Differences worth less than ``reconcile_dust_usdt`` are dust, not a disagreement.

A coin the exchange gives no USDT price for cannot be valued, so "worth less than dust" cannot be decided for
it; it is never silently left out (``BookDiff.unpriced_qty``).  The rule: if the journal holds the coin, the
difference is valued at the journal's own price for it (its entry price): beyond dust, trading halts
like any other disagreement (a position the journal values and trades is not what the exchange holds), and a
ticker that momentarily quotes nothing does not halt over dust.  If the journal does not hold it at all (an
airdrop, a delisted pair's leftovers, a deposit of a coin with no USDT market), it cannot be part of equity, and
halting all trading over what may be dust is worse than the disagreement; it is reported instead, with both
quantities, at every comparison ([RECONCILE] warning, counted, shown in /readyz), for an operator to handle.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from services.executor.brokers.base import Broker, TransientBrokerError
from services.executor.brokers.paper import QUOTE, base_asset
from services.executor.exchange_calls import ExecutionLimits, rate_limit_pause, retried
from services.executor.journal import Journal, now_ms
from services.executor.runner import (
    HOLDINGS_TOLERANCE,
    journal_portfolio,
    portfolio_balances,
    write_snapshot,
)
from shared.logging import warn


@dataclass(frozen=True)
class BookDiff:
    """exchange minus journal, per asset, for differences beyond dust (quote value in ``values``)."""

    diff: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()  # differing assets the exchange gives no USDT price for
    # asset -> (journal quantity, exchange quantity), for every asset in ``unpriced``
    unpriced_qty: dict[str, tuple[float, float]] = field(default_factory=dict)
    marked: tuple[str, ...] = ()  # differing assets valued at the journal's price (the exchange quoted none)

    @property
    def surplus(self) -> dict[str, float]:
        return {a: d for a, d in self.diff.items() if d > 0}

    @property
    def shortfall(self) -> dict[str, float]:
        return {a: -d for a, d in self.diff.items() if d < 0}

    @property
    def unpriced_held(self) -> dict[str, tuple[float, float]]:
        """Unpriced coins the journal holds, at a quantity the exchange does not: these halt trading."""
        return {a: q for a, q in self.unpriced_qty.items() if not HOLDINGS_TOLERANCE.allows(q[0], 0.0)}

    @property
    def unpriced_unknown(self) -> dict[str, tuple[float, float]]:
        """Unpriced coins only the exchange holds: reported at every comparison, never a halt."""
        return {a: q for a, q in self.unpriced_qty.items() if a not in self.unpriced_held}

    @property
    def clean(self) -> bool:
        return not self.diff and not self.unpriced_held

    def describe(self) -> str:
        parts = [f"{a} {d:+.8g} (~{self.values[a]:.2f} {QUOTE}"
                 + (f" at the journal's price: no {QUOTE} quote now)" if a in self.marked else ")")
                 for a, d in sorted(self.diff.items())]
        parts += describe_unpriced(self.unpriced_held)
        return ", ".join(parts) or "none"


def describe_unpriced(unpriced: dict[str, tuple[float, float]]) -> list[str]:
    return [f"{a} journal {j:.8g} vs exchange {x:.8g} (no {QUOTE} price)" for a, (j, x) in sorted(unpriced.items())]


def compare_books(journal: dict[str, float], exchange: dict[str, float], prices: dict[str, float],
                  dust_quote: float, marks: dict[str, float] | None = None) -> BookDiff:
    """What the exchange holds beyond the journal (positive) or short of it (negative), worth more than dust.

    ``prices``: asset -> price in the quote asset.  More quote on the exchange than in the journal is the
    normal case (the journal trades with at most the configured capital) and is no disagreement; less is.
    ``marks``: asset -> the journal's own price for a coin it holds (its entry, ``read_books``), used when the exchange
    quotes none at the moment (a ticker without a last price), so a dust difference does not halt trading.
    Pure.
    """
    diff: dict[str, float] = {}
    values: dict[str, float] = {}
    unpriced: dict[str, tuple[float, float]] = {}
    marked: list[str] = []
    for asset in sorted(set(journal) | set(exchange)):
        held, seen = journal.get(asset, 0.0), exchange.get(asset, 0.0)
        if HOLDINGS_TOLERANCE.allows(held, seen) and HOLDINGS_TOLERANCE.allows(seen, held):
            continue
        delta = seen - held
        if asset == QUOTE:
            if delta < -dust_quote:
                diff[asset], values[asset] = delta, -delta
            continue
        price = prices.get(asset, 0.0)
        if not price > 0 and held and (marks or {}).get(asset, 0.0) > 0:
            price = (marks or {})[asset]
            marked.append(asset)
        if not price > 0:
            unpriced[asset] = (held, seen)
            continue
        if abs(delta) * price > dust_quote:
            diff[asset], values[asset] = delta, abs(delta) * price
    return BookDiff(diff, values, tuple(unpriced), unpriced, tuple(a for a in marked if a in diff))


async def confirmed_balances(broker: Broker, logger: logging.Logger, reads: int = 2, delay_s: float = 0.5,
                             max_reads: int = 20) -> dict[str, float]:
    """Free balances, trusted once ``reads`` consecutive successful reads agree (a glitched or stale snapshot
    must neither create a surplus nor hide one)."""
    last: dict[str, float] | None = None
    agreeing = 0
    failure: TransientBrokerError | None = None
    for attempt in range(1, max_reads + 1):
        try:
            current = await broker.fetch_free_balances()
        except TransientBrokerError as exc:
            last, agreeing, failure = None, 0, exc
            pause = max(delay_s, rate_limit_pause(exc))
            warn(logger, "RECONCILE", "balance read failed", attempt=attempt, retry_in_s=pause, error=str(exc)[:200])
            await asyncio.sleep(pause)
            continue
        same = last is not None and set(last) == set(current) and all(
            HOLDINGS_TOLERANCE.allows(last[a], current[a]) and HOLDINGS_TOLERANCE.allows(current[a], last[a])
            for a in current)
        agreeing = agreeing + 1 if same else 1
        last = current
        if agreeing >= reads:
            return current
        await asyncio.sleep(delay_s)
    # The last read's failure, if one failed, is what /readyz and the logs name (a refused key reads differently
    # from a 503), and keeps its class (CredentialsRejected, RateLimitedError).
    if failure is not None:
        raise type(failure)(f"exchange balances could not be read consistently: {failure}")
    raise TransientBrokerError("exchange balances could not be read consistently")


async def prices_of(broker: Broker, assets: list[str], limits: ExecutionLimits, logger: logging.Logger,
                    ) -> dict[str, float]:
    """asset -> price in the quote asset now (assets without a USDT market are absent)."""
    wanted = [a for a in assets if a != QUOTE]
    if not wanted:
        return {}
    quotes = await retried(lambda: broker.fetch_prices([f"{a}/{QUOTE}" for a in wanted]), limits, logger,
                           "RECONCILE", "price read failed; retrying", "prices unreadable")
    return {sym.split("/")[0]: p for sym, p in quotes.items()}


async def read_books(journal: Journal, broker: Broker, limits: ExecutionLimits, logger: logging.Logger,
                     dust_quote: float, empty_journal: bool = False) -> tuple[BookDiff, dict[str, float],
                                                                            dict[str, float]]:
    """(difference, the exchange's balances, prices).  ``empty_journal``: compare against nothing held."""
    exchange = await confirmed_balances(broker, logger)
    mine, marks = ({QUOTE: exchange.get(QUOTE, 0.0)}, {}) if empty_journal else journal_books(journal)
    prices = await prices_of(broker, sorted(set(mine) | set(exchange)), limits, logger)
    return compare_books(mine, exchange, prices, dust_quote, marks), exchange, prices


def journal_books(journal: Journal) -> tuple[dict[str, float], dict[str, float]]:
    """The journal's side of a comparison: (asset -> quantity the exchange should hold, asset -> the journal's
    own price of each coin it holds, its entry, which values a difference the exchange quotes no price for),
    both from one read of its portfolio."""
    pf = journal_portfolio(journal)
    return portfolio_balances(pf), {base_asset(sym): px for sym, px in pf.entry_prices.items() if px > 0}


def compare_with_journal(journal: Journal, exchange: dict[str, float], prices: dict[str, float],
                         dust_quote: float) -> BookDiff:
    """``compare_books`` of the journal as it is now against balances and prices already read."""
    mine, marks = journal_books(journal)
    return compare_books(mine, exchange, prices, dust_quote, marks)


def adopt(journal: Journal, diff: BookDiff, prices: dict[str, float], request_at_ms: int, requested_by: str,
          reason: str, marks: dict[str, float]) -> str:
    """Inside one transaction: record the exchange's balances for every differing asset, at ``prices``, and
    close it with an ``adopted`` snapshot; returns the snapshot id.  Shortfalls of coins lower the holding,
    a cash shortfall lowers the cash; a cash surplus is left alone (the capital cap).  A held coin with no price
    (``unpriced_held``) takes the exchange's quantity at the journal's entry price: an adoption moves no cash, and
    without this an operator could never clear the halt it caused."""
    cycle_id = f"adopt-{request_at_ms}"
    at = now_ms()
    entries = journal_portfolio(journal).entry_prices
    changes = dict(diff.diff)
    changes.update({a: seen - held for a, (held, seen) in diff.unpriced_held.items()})
    journal.begin()
    for asset, delta in sorted(changes.items()):
        symbol = asset if asset == QUOTE else f"{asset}/{QUOTE}"
        price = 1.0 if asset == QUOTE else prices.get(asset) or entries.get(symbol, 0.0)
        journal.record_fill(f"adopt-{asset}", cycle_id, cycle_id, symbol, "adopt", delta, price, 0.0, at,
                            fee_base=0.0, fee_quote=0.0)
    journal.event(cycle_id, "adopted", requested_at_ms=request_at_ms, requested_by=requested_by, reason=reason,
                  changes=changes, values=diff.values, prices={a: prices.get(a) for a in changes})
    marks.update({f"{a}/{QUOTE}": p for a, p in prices.items()})
    snapshot_id = write_snapshot(journal, cycle_id, "", "adopted", marks)
    journal.commit()
    return snapshot_id


def last_adoption_ms(journal: Journal) -> int:
    """The request time of the newest adoption applied (0: none), so a request is applied once."""
    cycle_id = journal.last_event_cycle("adopted")
    return int(cycle_id.removeprefix("adopt-")) if cycle_id else 0
