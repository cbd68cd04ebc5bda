"""The executor's market rules (lot step, minimum quantity and notional), kept as fresh as the exchange's.

Read at boot, then again from the exchange (ccxt told to reload, never its cache) when they are older than
``markets_refresh_s`` by the venue's clock (as ingest measures it: a day of market time, also in an accelerated
rehearsal), whenever a plan names a symbol they lack, and whenever it names one the broker has since seen
delisted: a pair listed after the start, a pair gone, or a step size or minimum notional the venue changed, must
not be traded on the boot-time copy.

A reload that fails keeps the rules in force (``[MARKETS]`` warning, counted): yesterday's step size is still
the best known one.  A symbol the rules lack is never traded on a guess: if the reload that should bring its
rule fails on an unreachable exchange, the plan waits (TransientBrokerError: redelivered, never dropped); if
the exchange answers and still lists no such market, the leg is skipped "no market rules", as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aura.strategy.types import MarketRule
from services.executor.brokers.base import Broker, TransientBrokerError
from shared.health import HealthState
from shared.logging import info, warn


class MarketRules:
    """``rules``: symbol -> rule, replaced as a whole on each successful reload (never merged: a pair the
    exchange stopped trading loses its rule, as ``rules_from_ccxt`` leaves halted markets out)."""

    def __init__(self, broker: Broker, rules: dict[str, MarketRule], refresh_s: float, logger: logging.Logger,
                 health: HealthState, clock: Callable[[], Awaitable[int]] | None = None) -> None:
        self.broker, self.rules, self.logger, self.health = broker, rules, logger, health
        self.refresh_ms = int(refresh_s * 1000)
        self.clock = clock if clock is not None else (lambda: broker.fetch_time())
        # Venue time of the last successful read; None: read at boot at a time the venue never told us, so
        # the first plan reads them again rather than trust a copy of unknown age.
        self.loaded_ms: int | None = None

    async def _now(self) -> int | None:
        try:
            return int(await self.clock())
        except Exception as exc:  # the age is unknown; the rules in force stay (run_plan reads the clock too)
            warn(self.logger, "MARKETS", "exchange clock unreadable; market rules age unknown", error=str(exc)[:200])
            return None

    async def for_symbols(self, symbols: Iterable[str]) -> dict[str, MarketRule]:
        """The rules to trade ``symbols`` with, read again first if they are due or lack one of them."""
        wanted = set(symbols)
        missing = sorted(s for s in wanted if s not in self.rules)
        # A pair the client found delisted since (a price read the exchange refused for it) still has a rule here:
        # read again, so its leg is skipped as unlisted rather than looked up or sent.
        gone = sorted(self.broker.unlisted(s for s in wanted if s in self.rules))
        now = await self._now()
        due = self.loaded_ms is None or (now is not None and now - self.loaded_ms >= self.refresh_ms)
        if not missing and not gone and not due:
            return self.rules
        why = f"no rule for {', '.join(missing)}" if missing else f"delisted: {', '.join(gone)}" if gone else "due"
        try:
            fresh = await self.broker.load_markets(reload=True)
            if not fresh:
                raise TransientBrokerError("the exchange listed no markets")
        except Exception as exc:
            self.health.inc("markets_reload_failures")
            if missing and isinstance(exc, TransientBrokerError):
                warn(self.logger, "MARKETS", "market rules unreadable and a plan names symbols they lack; the plan "
                     "waits", missing=missing, error=str(exc)[:200])
                raise TransientBrokerError(f"market rules for {', '.join(missing)} unreadable: {exc}") from exc
            warn(self.logger, "MARKETS", "market rules could not be reloaded; keeping the rules in force",
                 reason=why, loaded_ms=self.loaded_ms, symbols=len(self.rules), error=str(exc)[:200])
            if missing:
                raise
            return self.rules
        changed = sorted(s for s in set(fresh) & set(self.rules) if fresh[s] != self.rules[s])
        info(self.logger, "MARKETS", "market rules reloaded from the exchange", reason=why, symbols=len(fresh),
             added=sorted(set(fresh) - set(self.rules)), removed=sorted(set(self.rules) - set(fresh)),
             changed=changed, venue_ms=now)
        self.health.inc("markets_reloads")
        self.rules = fresh
        self.loaded_ms = now if now is not None else self.loaded_ms
        return self.rules
