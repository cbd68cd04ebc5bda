"""Abort notices: which ones close a cycle, and what the rest leave behind.

An abort notice closes a cycle only if ingest announced that cycle (the newest ``DataReady`` or ``DataStale``) and
it is not closed yet: a notice for any other id is journaled as an event and never becomes an equity point the
kill-switch would count.  Ingest, signal and risk may each publish aborts, so a compromised stage could otherwise
dilute the kill-switch's rolling window with equity points that have not a single price behind them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aura.strategy.schedule import timeframe_ms
from services.executor.announce import publish_snapshot
from services.executor.brokers.base import Broker
from services.executor.journal import Journal
from services.executor.outage import ExchangeOutage
from shared.allowance import Allowance
from shared.bus import newest_valid
from shared.contracts import (
    ContractError,
    CycleAborted,
    DataReady,
    DataStale,
    PlanBody,
    PortfolioSnapshot,
    decode,
    subject_of,
)
from shared.cycles import as_of_of_cycle, is_tick_cycle, notice_problem
from shared.logging import info, warn
from shared.service import ServiceContext

MAX_ID = 80  # ids from the bus are journaled at most this long (a refused message's may be anything)
# How long a notice the venue's clock refused stays refused without another read (refused_recently), and how many
# such notices are remembered (aborts name only the newest DataReady's or DataStale's: two at a time).
REFUSED_REUSE_S = 60.0
REFUSED_KEPT = 8
UNBOUNDED_MS = 2**62  # "now" for the checks that need no clock: no date is after it


def ignored_aborts() -> Allowance:
    """Abort notices for cycles ingest never announced: each is counted (``aborts_ignored``), and journaled and
    logged while the stage's allowance lasts (20, then one a minute, each saying how many went unjournaled before
    it).  Journaled one synced row each, a flood from one compromised stage grew the journal, and the disk under
    it, without bound."""
    return Allowance(burst=20, every_s=60.0)


def refused_aborts() -> Allowance:
    """Abort notices refused outright (malformed, or naming another stage than the subject they came on): each is
    counted (``aborts_refused``) and terminated; journaled and dead-lettered while the subject's allowance lasts
    (20, then one a minute, each saying how many went unrecorded before it; the message itself stays in its
    stream).  Recorded every time, 2,500 junk notices from one compromised stage wrote 2,500 synced journal rows
    and pushed the executor's genuine dead letters out of AURA_DLQ (2,000 kept per subject)."""
    return Allowance(burst=20, every_s=60.0)


def closed_cycle_republishes() -> Allowance:
    """Aborts of a cycle already closed: the closing snapshot is said once more (a stage that missed it, an abort
    redelivered after a crash), three times per stage, then once a minute.  Said for every such abort, a stage
    sending a thousand of them made the executor store a thousand snapshot copies in AURA_EXEC, pushing out the
    fills and snapshots the console and the operator read."""
    return Allowance(burst=3, every_s=60.0)


async def bar_not_announced(js: JetStreamContext, journal: Journal, plan: PlanBody, timeframe: str) -> str:
    """Paper mode (no exchange clock): why a bar's plan is dated after the newest bar ingest announced, or with
    none announced yet more than one bar after the newest bar the journal closed ('' if it is not, or is a
    tick's; a system that has announced and closed nothing has no clock to judge by).  A signed plan under a bar
    to come, trading or refused, would close that bar's cycle: the journal's newest bar from then on, every
    genuine abort after it ignored as older (found by a review)."""
    if is_tick_cycle(plan.cycle_id):
        return ""
    ready = await newest_valid(js, DataReady)
    if ready is not None:
        if plan.as_of_ms <= ready.as_of_ms:
            return ""
        return (f"plan {plan.cycle_id[:40]!r} is dated {plan.as_of_ms}, after the newest bar ingest announced "
                f"({ready.cycle_id[:40]})")
    closed = as_of_of_cycle(journal.newest_bar_cycle(timeframe) or "")
    if closed is None or plan.as_of_ms <= closed + timeframe_ms(timeframe):
        return ""
    return f"plan {plan.cycle_id[:40]!r} is dated more than one bar after the newest bar closed ({closed})"


# The executor's refusal: journaled as ``plan_rejected`` and dead-lettered (msg, reason, detail, cycle id).
Reject = Callable[[Msg, str, str, str], Awaitable[None]]


class AbortNotices:
    """The executor's handling of ``CycleAborted``: closes announced cycles with an ``aborted`` snapshot."""

    def __init__(self, ctx: ServiceContext, journal: Journal, broker: Broker, outage: ExchangeOutage,
                 reject: Reject, current_snapshot: Callable[[], PortfolioSnapshot],
                 write_snapshot: Callable[[str, str, str], PortfolioSnapshot]) -> None:
        self.ctx = ctx
        self.journal = journal
        self.broker = broker
        self.outage = outage
        # Shared with the plans: a refused notice is journaled and dead-lettered exactly like a refused plan.
        self.reject = reject
        self.current_snapshot = current_snapshot
        self.write_snapshot = write_snapshot
        self.ignored_aborts = ignored_aborts()
        self.refused_aborts = refused_aborts()
        self.republishes = closed_cycle_republishes()
        self._refused: OrderedDict[str, float] = OrderedDict()  # notice cycle id -> monotonic s of its refusal

    async def refuse(self, msg: Msg, reason: str, detail: str, cycle_id: str) -> None:
        """A refused notice: journaled and dead-lettered while its subject's allowance lasts, else counted and
        terminated (refused_aborts says why)."""
        self.ctx.health.inc("aborts_refused", reason=reason)
        unrecorded = self.refused_aborts.note(msg.subject)
        if unrecorded is None:
            await msg.term()
            return
        if unrecorded:
            detail = f"{detail} ({unrecorded} refused notices on this subject went unrecorded before this one)"
        await self.reject(msg, reason, detail, cycle_id)

    async def announced(self, cycle_id: str) -> bool:
        """Whether ``cycle_id`` is a cycle ingest announced last, under the id of its bar (shared/cycles.py): the
        newest DataReady's or DataStale's, dated at most one bar after now and after the newest bar a snapshot
        closed.  Now is the venue's clock (read only for such an abort), in the replay the newest bar announced
        or closed (two stale bars in a row are each one bar after the one before).  A cycle closes once and bars
        only move forward, so aborts add at most about one equity point per bar, never one per notice a
        compromised ingest invents (announcing bars to come, or bars long gone).  A malformed message is
        stepped over."""
        s = self.ctx.settings
        named = as_of_of_cycle(cycle_id)
        closed = as_of_of_cycle(self.journal.newest_bar_cycle(s.timeframe) or "")
        if named is None or (closed is not None and named <= closed):
            return False
        ready = await newest_valid(self.ctx.js, DataReady)
        notice: DataReady | DataStale | None = ready
        if ready is None or cycle_id != ready.cycle_id:
            notice = await newest_valid(self.ctx.js, DataStale)
            if notice is None or cycle_id != notice.cycle_id:
                return False
        # What needs no clock first (its timeframe, an id that names its bar), so a notice that cannot count costs
        # no request to the exchange.
        if notice_problem(notice, s.timeframe, UNBOUNDED_MS, "any clock"):
            return False
        if s.ingest_source == "replay":  # only the replay reads its clock from the bars (and the journal)
            now = max(ready.as_of_ms if ready is not None else 0, closed or 0)
            if now:  # else no bar announced or closed yet: the broker's clock
                return not notice_problem(notice, s.timeframe, now, "the replay's newest bar")
        if self.refused_recently(notice):
            return False
        now, clock = await self.broker.fetch_time(), f"{self.broker.name}'s clock"
        self.outage.answered()  # an abort waited out an outage for this read: the exchange is back
        if problem := notice_problem(notice, s.timeframe, now, clock):
            self._refused[notice.cycle_id] = time.monotonic()
            while len(self._refused) > REFUSED_KEPT:
                self._refused.popitem(last=False)
        return not problem

    def refused_recently(self, notice: DataReady | DataStale) -> bool:
        """Whether the venue's clock refused ``notice`` less than ``REFUSED_REUSE_S`` ago.  Read for every abort, a
        compromised ingest's flood of aborts naming one refused notice cost a rate-limited request each, while
        plans (stop-loss exits too) queued behind them on the one-at-a-time consumer (found by an audit: 100
        aborts held it 5.2 s).  Only a refusal is remembered, never the clock: a rehearsal's venue runs thousands
        of times faster than ours, so a notice is always judged on a fresh read of it.  (Ingest announces only bars
        the venue has closed: an honest notice is never refused.)"""
        at = self._refused.get(notice.cycle_id)
        return at is not None and time.monotonic() - at < REFUSED_REUSE_S

    async def on_aborted(self, msg: Msg) -> None:
        try:
            aborted = decode(msg.data, CycleAborted)
        except ContractError as exc:
            await self.refuse(msg, "malformed", str(exc), "unknown")
            return
        if subject_of(aborted) != msg.subject:
            await self.refuse(msg, "wrong_stage", f"abort for stage {aborted.stage[:40]!r} sent on {msg.subject}",
                              aborted.cycle_id)
            return
        if self.journal.cycle_closed(aborted.cycle_id):
            info(self.ctx.logger, "IDEMPOTENCY", "cycle already closed; abort notice acked", cycle_id=aborted.cycle_id,
                 stage=aborted.stage)
            await msg.ack()
            snap = self.current_snapshot()
            # Only the newest closed cycle's snapshot can be the one a stage is waiting for.
            if snap.cycle_id == aborted.cycle_id and self.republishes.note(aborted.stage) is not None:
                await publish_snapshot(self.ctx.js, snap, again=True)
            return
        if not await self.announced(aborted.cycle_id):
            # Only a cycle ingest announced can end as an aborted cycle: anything else would add equity points
            # that dilute the kill-switch's rolling window without a single price behind them.
            self.ctx.health.inc("aborts_ignored")
            since = self.ignored_aborts.note(aborted.stage)
            if since is not None:
                warn(self.ctx.logger, "UNKNOWN_CYCLE", "abort notice for a cycle ingest did not announce (or not for "
                     "a bar that has closed); journaled as an event only", cycle_id=aborted.cycle_id[:MAX_ID],
                     stage=aborted.stage, unjournaled_since_last=since)
                self.journal.begin()
                self.journal.event(aborted.cycle_id[:MAX_ID], "abort_ignored", stage=aborted.stage,
                                   reason=aborted.reason[:500], unjournaled_since_last=since)
                self.journal.commit()
            await msg.ack()
            return
        if self.journal.initial_cash() is None:
            # An empty journal waiting for the operator's adoption (live, coins on the exchange): a snapshot now
            # would book the portfolio at zero cash, and the adoption, seeing a journal that is no longer empty,
            # would write no genesis and keep that zero.  The cycle is journaled as an event only.
            warn(self.ctx.logger, "RECONCILE", "abort notice while the journal has no genesis (waiting for `aura "
                 "journal adopt`); journaled as an event only", cycle_id=aborted.cycle_id, stage=aborted.stage)
            self.journal.begin()
            self.journal.event(aborted.cycle_id, "abort_before_genesis", stage=aborted.stage,
                               reason=aborted.reason[:500])
            self.journal.commit()
            await msg.ack()
            return
        self.journal.begin()
        self.journal.event(aborted.cycle_id, "cycle_aborted", stage=aborted.stage, reason=aborted.reason)
        snap = self.write_snapshot(aborted.cycle_id, "", "aborted")
        self.journal.commit()
        await msg.ack()
        await publish_snapshot(self.ctx.js, snap)
        self.ctx.health.inc("cycles_aborted")
        warn(self.ctx.logger, "CYCLE_ABORTED", "cycle ended without a plan", cycle_id=aborted.cycle_id,
             stage=aborted.stage, reason=aborted.reason)
