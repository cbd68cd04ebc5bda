"""Live mode: keep trading only while the journal and the exchange agree ([RECONCILE]), adopt on request.

At boot and before each new plan the two books are compared (``books.read_books``).  A disagreement beyond
dust halts trading: every new plan is refused (journaled), /readyz turns red with what differs, and nothing
is written to the journal in the exchange's name until an operator asks for it with ``aura journal adopt``
(a signed request, ``operator.adopt`` in ``aura_state``, that the executor verifies against the operator key it
pinned).  An empty journal beside an exchange that holds coins is such a disagreement: no silent genesis.
Coins without a USDT price follow ``books``' rule: a held one that differs halts; one the journal does not hold
is reported at every comparison ([RECONCILE] warning, ``reconcile_unpriced``, /readyz detail), never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from services.executor.books import (
    BookDiff,
    adopt,
    compare_with_journal,
    describe_unpriced,
    last_adoption_ms,
    read_books,
)
from services.executor.brokers.base import Broker
from services.executor.brokers.paper import QUOTE
from services.executor.exchange_calls import ExecutionLimits
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis
from shared.allowance import SaidOnce
from shared.config import Settings
from shared.credentials import trusted_key
from shared.health import HealthState
from shared.logging import error, info, warn
from shared.operator_requests import ADOPT_KEY, read_request

POLL_S = 2.0  # how often a halted executor looks for the operator's adoption request
# An adoption answers the halt the operator saw: a request made before the halt began (one stored from an earlier
# halt, or written while the books agreed) must not clear it unasked.  The request carries the operator's clock,
# the halt this one's: they may disagree by this much (NTP keeps them far closer).  A halt found at boot began, for
# all this process knows, when the journal last recorded agreeing books (its newest snapshot or adoption): an
# operator who asked while the executor was down is answered, a request older than that is not.
ADOPT_SKEW_MS = 5_000


class Reconciler:
    """``on_agree`` runs once an adoption made the books agree (the executor publishes the adopted book)."""

    def __init__(self, settings: Settings, journal: Journal, broker: Broker, limits: ExecutionLimits,
                 kv: KeyValue, health: HealthState, logger: logging.Logger, marks: dict[str, float],
                 on_agree: Callable[[], Awaitable[None]]) -> None:
        self.settings, self.journal, self.broker, self.limits = settings, journal, broker, limits
        self.kv, self.health, self.logger, self.marks = kv, health, logger, marks
        self.on_agree = on_agree
        self.operator_key = trusted_key(settings.keys, "executor", "operator")
        self.halt: str | None = None  # why trading is halted ([RECONCILE]); None: the books agree
        self.halted_since_ms = 0  # when the current halt began (this process's wall clock; see ADOPT_SKEW_MS)
        self.compared = False  # a comparison has run in this process (the first one's halt may predate it)
        self._said = SaidOnce()  # a refused or stale request is said once, not at every poll
        self.unpriced = ""  # coins with no USDT price only the exchange holds, as of the last comparison
        self._waiter: asyncio.Task[None] | None = None
        health.checks["books"] = self._readiness

    def _readiness(self) -> tuple[bool, str]:
        if self.halt is not None:
            return False, f"halted: {self.halt}; run `aura journal adopt`"
        if not self.compared:
            # The boot compares only once recovery finished what a crash interrupted; until then nobody knows.
            return False, "not compared with the exchange yet: an interrupted plan is still to finish"
        note = f"; not in the journal, no {QUOTE} price: {self.unpriced}" if self.unpriced else ""
        return True, "journal == exchange" + note

    def _report_unpriced(self, diff: BookDiff) -> None:
        """Every comparison: coins the exchange holds that the journal does not, and that have no price."""
        unknown = diff.unpriced_unknown
        self.unpriced = ", ".join(describe_unpriced(unknown))
        self.health.set("reconcile_unpriced_assets", float(len(unknown)))
        if unknown:
            self.health.inc("reconcile_unpriced")
            warn(self.logger, "RECONCILE", "the exchange holds coins the journal does not and gives no USDT price "
                 "for them: not in equity, not traded; check them by hand", coins=self.unpriced,
                 quantities={a: {"journal": j, "exchange": x} for a, (j, x) in sorted(unknown.items())})

    def _halt(self, why: str, diff: BookDiff) -> None:
        if self.halt is None:
            self.halted_since_ms = int(time.time() * 1000) if self.compared else self._last_agreed_ms()
        self.compared = True
        if self.halt != why:
            error(self.logger, "RECONCILE", f"trading halted: {why}", differences=diff.diff, values=diff.values,
                  unpriced={a: {"journal": j, "exchange": x} for a, (j, x) in sorted(diff.unpriced_qty.items())})
            self.health.inc("reconcile_halts")
        self.halt = why
        if self._waiter is None or self._waiter.done():  # look for the operator's adoption, plans or not
            self._waiter = asyncio.get_running_loop().create_task(self._wait_for_adoption())

    def _last_agreed_ms(self) -> int:
        """When the journal last recorded books that agreed (its newest snapshot or adoption); now for an empty one."""
        latest = self.journal.latest_snapshot()
        if latest is None:
            return int(time.time() * 1000)
        return max(int(latest.committed_ts_ms), last_adoption_ms(self.journal))

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()

    async def genesis(self) -> bool:
        """First start (an empty journal): genesis from the exchange's cash, or a halt if the exchange already
        holds coins (a lost journal must never become a silent new genesis).  False: wait for an adoption."""
        diff, exchange, _ = await read_books(self.journal, self.broker, self.limits, self.logger,
                                             self.settings.reconcile_dust_usdt, empty_journal=True)
        self._report_unpriced(diff)
        if diff.surplus:
            self._halt(f"the journal is empty while the exchange holds {diff.describe()}", diff)
            return False
        cash = min(exchange.get(QUOTE, 0.0), self.settings.paper_cash_usdt)  # at most the configured capital
        ensure_genesis(self.journal, cash)
        self.compared = True
        info(self.logger, "BOOT", "genesis snapshot written", cash=cash)
        return True

    async def check_books(self) -> bool:
        """Compare the books (after boot recovery finished what a crash interrupted); True if they agree."""
        diff, _, _ = await read_books(self.journal, self.broker, self.limits, self.logger,
                                      self.settings.reconcile_dust_usdt)
        return self.check(diff)

    def check(self, diff: BookDiff) -> bool:
        self._report_unpriced(diff)
        if diff.clean:
            self.compared = True
            if self.halt is not None:
                info(self.logger, "RECONCILE", "journal and exchange agree again")
            self.halt = None
            return True
        self._halt(f"exchange and journal differ: {diff.describe()}", diff)
        return False

    async def before_plan(self) -> bool:
        """Compare the books before a new plan; True if it may trade."""
        if self.halt is not None:
            await self.try_adopt()
            if self.halt is not None:
                return False
        return await self.check_books()

    async def try_adopt(self) -> bool:
        """Apply a verified adoption request newer than the last one applied; True if the books now agree."""
        request, problem = await read_request(self.kv, ADOPT_KEY, self.operator_key)
        if self._said.first("problem", problem) and problem:
            warn(self.logger, "RECONCILE", "adoption request refused", error=problem)
        if request is None or request.requested_at_ms <= last_adoption_ms(self.journal):
            return False
        if request.requested_at_ms < self.halted_since_ms - ADOPT_SKEW_MS:
            if self._said.first("before_halt", request.requested_at_ms):
                warn(self.logger, "RECONCILE", "adoption request made before this halt began refused: run `aura "
                     "journal adopt` again for this one (and check the clocks if you just did)",
                     requested_at_ms=request.requested_at_ms, halted_since_ms=self.halted_since_ms,
                     by=request.requested_by)
                self.health.inc("adoptions_refused")
            return False
        dust = self.settings.reconcile_dust_usdt
        empty = self.journal.latest_snapshot() is None
        diff, exchange, prices = await read_books(self.journal, self.broker, self.limits, self.logger, dust, empty)
        if empty:
            ensure_genesis(self.journal, min(exchange.get(QUOTE, 0.0), self.settings.paper_cash_usdt))
            diff = compare_with_journal(self.journal, exchange, prices, dust)
        snapshot_id = adopt(self.journal, diff, prices, request.requested_at_ms, request.requested_by,
                            request.reason, self.marks)
        warn(self.logger, "RECONCILE", "operator adoption applied: the journal now records the exchange's "
             "balances", snapshot_id=snapshot_id, changes=diff.diff, by=request.requested_by, reason=request.reason)
        self.health.inc("adoptions")
        if not self.check(compare_with_journal(self.journal, exchange, prices, dust)):
            return False
        await self.on_agree()
        return True

    async def _wait_for_adoption(self) -> None:
        """While halted, look for the operator's request every POLL_S until the books agree."""
        while self.halt is not None:
            try:
                await self.try_adopt()
            except Exception as exc:  # the exchange or the bus is down: try again at the next poll
                with contextlib.suppress(Exception):
                    self.journal.rollback()
                warn(self.logger, "RECONCILE", "adoption check failed; retrying", error=f"{type(exc).__name__}: "
                     f"{exc}"[:200])
            if self.halt is not None:
                await asyncio.sleep(POLL_S)
