"""Executor service shell: one approved plan at a time, journaled to SQLite, acked only after the commit.

The executor is the only process that opens the journal for writing and the only one that reads exchange
keys.  It consumes the plans stream through one durable pull consumer with ``max_ack_pending=1``; a plan
whose Ed25519 signature does not verify against the risk public key is journaled as rejected,
dead-lettered and counted, never executed; so is a signed plan of a shape no planner makes
(``shared.plan_checks``: the same order listed twice, a side that is neither buy nor sell).  The risk public key
it trusts is pinned at first start (``shared.credentials.trusted_key``): a swapped ``risk.pub`` stops it at
boot.  Every cycle (executed, rejected or aborted upstream) ends in a snapshot row, which it signs and publishes
so the next cycle is computed on the new portfolio.  Which abort notices may close a cycle, and why: ``aborts.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule
from services.executor.aborts import MAX_ID, AbortNotices, bar_not_announced
from services.executor.announce import publish_fills, publish_snapshot
from services.executor.boot import TimedBroker, boot_when_possible, make_broker, open_journal
from services.executor.brokers.base import Broker, TransientBrokerError
from services.executor.exchange_calls import DEFAULT_SETTLE_S, ExecutionLimits, OrderUnresolved
from services.executor.journal import Journal, journal_fault
from services.executor.markets import MarketRules
from services.executor.outage import ExchangeOutage, is_exchange_outage
from services.executor.reconciler import Reconciler
from services.executor.runner import (
    FINAL_PLAN_STATES,
    LivePolicy,
    SyncCheck,
    current_snapshot,
    ensure_genesis,
    recent_marks,
    recover,
    run_plan,
    write_snapshot,
)
from services.executor.settle import apply_settle
from shared.bus import dead_letter, durable_pull, publish, settle_refused, state_kv
from shared.consumer import MAX_DELIVERIES, RedeliveryAlarm, pull_loop
from shared.contracts import (
    CONSUMERS,
    ApprovedPlan,
    ContractError,
    CycleAborted,
    PortfolioSnapshot,
    decode,
)
from shared.credentials import signing_key, trusted_key
from shared.logging import error, info, warn
from shared.plan_checks import plan_cycle_refusal, plan_shape_refusal
from shared.service import ServiceContext
from shared.signing import SignatureError, sign_struct, verify_plan

ACK_WAIT_S = CONSUMERS["executor"].ack_wait_s
# A failing message is redelivered after min(RETRY_BASE_S * delivery, RETRY_MAX_S).
RETRY_BASE_S = 2.0
RETRY_MAX_S = 30.0
# The newest snapshot is said again this often: its stream keeps messages 30 days, and a risk (re)started after a
# month without cycles (ingest down) found none and checked no stop-loss.
SNAPSHOT_REFRESH_S = 86_400.0


class Executor:
    def __init__(self, ctx: ServiceContext, journal: Journal, broker: Broker, rules: dict[str, MarketRule],
                 reconciler_kv: KeyValue | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.broker = broker
        self.markets = MarketRules(broker, rules, ctx.settings.markets_refresh_s, ctx.logger, ctx.health)
        # The paper broker cannot receive a request late (it lives and dies with this process), so a lookup
        # "not found" is final at once; a real exchange gets its recvWindow to settle (execution rule 6).
        settle = 0.0 if ctx.settings.dry_run else DEFAULT_SETTLE_S
        self.limits = ExecutionLimits(max_order_usdt=ctx.settings.max_order_usdt, settle_s=settle)
        self.public_key = trusted_key(ctx.settings.keys, "executor", "risk")
        self.snapshot_key = signing_key(ctx.settings.keys, "executor")
        self.marks: dict[str, float] = recent_marks(journal)  # a plan's prices replace them
        # Live mode only: the exchange is the other book; the paper broker's balances *are* the journal's.
        s = ctx.settings
        self.sync = None if s.dry_run else SyncCheck(dust_quote=s.reconcile_dust_usdt)
        self.live = None if s.dry_run else LivePolicy(
            max_price_deviation=s.max_price_deviation, max_spread=s.max_spread,
            plan_max_age_ms=2 * timeframe_ms(s.timeframe) + int(s.plan_grace_s * 1000),
            bar_ms=timeframe_ms(s.timeframe),
            # Kept back from each buy's budget for a quote-asset fee: above Binance's standard taker rate, so a
            # plan's last buy never overdraws the cash.
            fee_rate=0.002)
        self.reconciler = None if reconciler_kv is None else Reconciler(
            s, journal, broker, self.limits, reconciler_kv, ctx.health, ctx.logger, self.marks, self.adopted)
        # A plan that failed after it started executing: it is retried, never dropped, and readiness says so.
        self.stuck: str | None = None
        # The journal's environment is failing (read-only, full, locked): plans wait; readiness says why.
        self.io_fault: str | None = None
        ctx.health.checks["journal"] = lambda: (self.io_fault is None, "writable" if self.io_fault is None else
                                                f"cannot write the journal ({self.io_fault}); plans wait")
        self.outage = ExchangeOutage(ctx.health, ctx.logger)  # the exchange unreachable: plans wait, never dropped
        self.aborts = AbortNotices(ctx, journal, broker, self.outage, self._reject, self.current_snapshot,
                                   self.write_snapshot)
        ctx.health.checks["plans"] = lambda: (self.stuck is None, "ok" if self.stuck is None else
                                              f"plan {self.stuck} keeps failing mid-execution; see [EXEC_ERROR]")

    # -- state ------------------------------------------------------------------------------------------
    def current_snapshot(self) -> PortfolioSnapshot:
        return sign_struct(current_snapshot(self.journal, self.ctx.settings.timeframe), self.snapshot_key)

    def show_book(self, snap: PortfolioSnapshot) -> None:
        """Equity and exposure gauges from the journal's book (at boot too: a restart must not read 0 till a plan)."""
        self.ctx.health.set("equity", snap.equity)
        self.ctx.health.set("exposure", 1.0 - snap.cash / snap.equity if snap.equity > 0 else 0.0)

    def write_snapshot(self, cycle_id: str, plan_id: str, status: str) -> PortfolioSnapshot:
        """Inside an open transaction: journal the portfolio the fills imply, closing ``cycle_id``."""
        write_snapshot(self.journal, cycle_id, plan_id, status, self.marks)
        return self.current_snapshot()

    async def boot(self) -> None:
        if not self.markets.rules:
            self.markets.rules = await self.broker.load_markets()
        if self.reconciler is not None and self.journal.latest_snapshot() is None:
            # Live: genesis from the exchange's balances; an empty journal beside coins on the exchange waits for
            # the operator's adoption ([RECONCILE]), with no snapshot at all.
            if not await self.reconciler.genesis():
                warn(self.ctx.logger, "BOOT", "executor waiting for `aura journal adopt`", reason=self.reconciler.halt)
                return
        elif self.journal.latest_snapshot() is None:
            cash = self.ctx.settings.paper_cash_usdt
            ensure_genesis(self.journal, cash)
            info(self.ctx.logger, "BOOT", "genesis snapshot written", cash=cash)
        try:
            runs = await recover(self.journal, self.broker, self.markets.rules, self.limits, self.ctx.logger,
                                 self.marks, self.live, self.sync)
        except TransientBrokerError as exc:
            # The exchange is unreachable: the interrupted plan stays "executing" and its redelivery finishes it.
            runs = []
            warn(self.ctx.logger, "BOOT", "could not finish an interrupted plan yet; its redelivery will",
                 error=str(exc))
        if self.reconciler is not None and not self.journal.unfinished_plans():
            # Only once recovery finished what a crash interrupted: its orders are on the exchange before they
            # are in the journal, and would look like coins the journal does not know.
            await self.reconciler.check_books()
        snap = self.current_snapshot()
        self.show_book(snap)
        for run in runs:
            info(self.ctx.logger, "CYCLE_COMMITTED", "interrupted plan finished at boot", cycle_id=run.cycle_id,
                 plan_id=run.plan_id, status=run.status, fills=len(run.new_fills))
            await publish_fills(self.ctx.js, self.journal, run)
        await publish(self.ctx.js, snap, msg_id=snap.snapshot_id)
        info(self.ctx.logger, "BOOT", "executor ready", snapshot_id=snap.snapshot_id, cycle_id=snap.cycle_id,
             cash=snap.cash, holdings=snap.holdings, broker=self.broker.name)

    async def adopted(self) -> None:
        """Once the operator's adoption made the books agree: say the new book (the first one, if the journal
        was empty)."""
        snap = self.current_snapshot()
        self.show_book(snap)  # a live boot that waited for the adoption had no book to show
        await publish_snapshot(self.ctx.js, snap, again=True)
        info(self.ctx.logger, "RECONCILE", "trading resumes on the adopted book", snapshot_id=snap.snapshot_id,
             cash=snap.cash, holdings=snap.holdings)

    # -- plans ------------------------------------------------------------------------------------------
    async def on_message(self, msg: Msg) -> None:
        if msg.subject.startswith(CycleAborted.SUBJECT + "."):
            await self._guarded(msg, self.aborts.on_aborted)
        else:
            await self._guarded(msg, self._on_plan)

    async def _guarded(self, msg: Msg, handler: Any) -> None:
        """Run ``handler``; on an unexpected error, retry or dead-letter depending on what is at stake.

        A plan that has begun executing (its row is in the journal) is retried for as long as it fails:
        orders of it may be live at the exchange, and dropping it would leave them unreconciled, so later
        plans wait behind it and /readyz reports it.  A message that never started (a plan with no journal
        row, an abort notice) is dead-lettered after ``MAX_DELIVERIES``, so one poison message cannot block
        the executor forever; the rejection is journaled and nothing is lost (the dead letter keeps it).
        The journal's disk failing or the exchange not answering is no fault of the message: it waits, with
        backoff and /readyz red, however long that lasts (see ``outage.py``).
        """
        try:
            await handler(msg)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.journal.rollback()
            self.ctx.health.inc("handler_errors")
            deliveries = msg.metadata.num_delivered if msg.metadata else 1
            detail = f"{type(exc).__name__}: {exc}"
            fault = journal_fault(exc)
            if fault is not None:
                # The disk, not the plan: never dead-lettered, retried with backoff until the journal takes it.
                self.io_fault = fault
                self.ctx.health.inc("journal_faults")
                error(self.ctx.logger, "JOURNAL_FAULT", "journal cannot be written; plan kept for redelivery",
                      subject=msg.subject, delivery=deliveries, error=fault)
                await msg.nak(delay=min(RETRY_BASE_S * deliveries, RETRY_MAX_S))
                return
            cycle_id, plan_id, started = self._progress_of(msg)
            if started:
                self.stuck = plan_id
            if is_exchange_outage(exc):
                self.outage.failed(exc, subject=msg.subject, cycle_id=cycle_id, plan_id=plan_id, started=started,
                                   delivery=deliveries)
                if isinstance(exc, OrderUnresolved) and await self._settled_by_operator(exc.client_order_id):
                    await msg.nak()  # the order is closed: the plan goes on now
                    return
                await msg.nak(delay=min(RETRY_BASE_S * deliveries, RETRY_MAX_S))
                return
            if not started and deliveries >= MAX_DELIVERIES:
                await self._give_up(msg, f"{detail} (after {deliveries} deliveries)", cycle_id, plan_id)
                return
            error(self.ctx.logger, "EXEC_ERROR", "plan handling failed; will be redelivered", subject=msg.subject,
                  cycle_id=cycle_id, plan_id=plan_id, started=started, delivery=deliveries, error=detail)
            await msg.nak(delay=min(RETRY_BASE_S * deliveries, RETRY_MAX_S))
        else:
            if self.io_fault is not None:
                info(self.ctx.logger, "JOURNAL_FAULT", "journal writable again", was=self.io_fault)
                self.io_fault = None
            if self.stuck is not None and self._progress_of(msg)[1] == self.stuck:
                self.stuck = None

    async def _settled_by_operator(self, waiting: str) -> bool:
        """Whether an operator's settle request just closed an order nothing else can (services/executor/settle.py)."""
        if self.reconciler is None:
            return False
        try:
            return await apply_settle(self.journal, self.reconciler.kv, self.reconciler.operator_key,
                                      self.ctx.logger, waiting) is not None
        except Exception as exc:  # the bus or the journal: asked again at the next redelivery
            with contextlib.suppress(Exception):
                self.journal.rollback()
            warn(self.ctx.logger, "RECONCILE", "settle request unreadable; asked again at the next retry",
                 error=f"{type(exc).__name__}: {exc}"[:200])
            return False

    def _progress_of(self, msg: Msg) -> tuple[str, str, bool]:
        """(cycle id, plan id, whether the plan has a journal row) of a message whose handling failed."""
        if msg.subject.startswith(CycleAborted.SUBJECT + "."):
            return "", "", False
        try:
            plan = decode(msg.data, ApprovedPlan).plan
        except ContractError:
            return "", "", False
        try:
            return plan.cycle_id, plan.plan_id, self.journal.plan_status(plan.plan_id) is not None
        except Exception:
            return plan.cycle_id, plan.plan_id, True  # the journal cannot say: assume orders may be out

    async def _give_up(self, msg: Msg, detail: str, cycle_id: str, plan_id: str) -> None:
        try:
            await self._reject(msg, "handler_failed", detail, cycle_id, plan_id)
        except Exception as exc:  # the journal itself is failing: the dead letter still keeps the message
            self.journal.rollback()
            error(self.ctx.logger, "EXEC_ERROR", "could not journal the rejection; dead-lettering anyway",
                  plan_id=plan_id, error=f"{type(exc).__name__}: {exc}")
            await settle_refused(msg, await dead_letter(self.ctx.js, self.ctx.logger, self.ctx.name, msg.subject,
                                                        "handler_failed", detail, msg.data), self.ctx.logger)

    async def _reject(self, msg: Msg, reason: str, detail: str, cycle_id: str, plan_id: str = "") -> None:
        self.ctx.health.inc("plans_rejected", reason=reason)
        self.ctx.health.inc("dead_letters", reason=reason)
        self.journal.begin()
        self.journal.event(cycle_id[:MAX_ID] or "unknown", "plan_rejected", reason=reason, detail=detail[:2000],
                           plan_id=plan_id[:MAX_ID])
        self.journal.commit()
        await settle_refused(msg, await dead_letter(self.ctx.js, self.ctx.logger, self.ctx.name, msg.subject, reason,
                                                    detail, msg.data), self.ctx.logger)

    async def _on_plan(self, msg: Msg) -> None:
        try:
            approved = decode(msg.data, ApprovedPlan)
        except ContractError as exc:
            await self._reject(msg, "malformed", str(exc), "unknown")
            return
        plan = approved.plan
        try:
            verify_plan(approved, self.public_key)
        except SignatureError as exc:
            warn(self.ctx.logger, "FORGED_PLAN", "plan signature does not verify; refusing it", cycle_id=plan.cycle_id,
                 plan_id=plan.plan_id)
            await self._reject(msg, "bad_signature", str(exc), plan.cycle_id, plan.plan_id)
            return
        if refusal := plan_shape_refusal(plan) or plan_cycle_refusal(plan, self.ctx.settings.timeframe):
            # Signed with risk's key, yet no planner makes it: risk is compromised or broken (plan_checks.py).
            warn(self.ctx.logger, "FORGED_PLAN", "signed plan of a shape no planner makes; refusing it",
                 cycle_id=plan.cycle_id, plan_id=plan.plan_id, reason=refusal)
            await self._reject(msg, "malformed_plan", refusal, plan.cycle_id, plan.plan_id)
            return
        status = self.journal.plan_status(plan.plan_id)
        if status in FINAL_PLAN_STATES:
            info(self.ctx.logger, "IDEMPOTENCY", "plan already journaled; acking the redelivery", plan_id=plan.plan_id)
            await msg.ack()
            await publish_snapshot(self.ctx.js, self.current_snapshot(), again=True)
            return
        earlier = self.journal.executed_plan_for_cycle(plan.cycle_id) if status is None else None
        if earlier is not None:
            # A late copy of this cycle's data (ingest retries after a timeout) produced a second plan on the
            # new basis: one cycle trades once, whatever arrives twice.
            await self._reject(msg, "cycle_done", f"cycle {plan.cycle_id} already executed by plan {earlier}",
                               plan.cycle_id, plan.plan_id)
            await publish_snapshot(self.ctx.js, self.current_snapshot(), again=True)
            return
        ahead = "" if status is not None or self.live is not None else await bar_not_announced(
            self.ctx.js, self.journal, plan, self.ctx.settings.timeframe)
        if ahead:
            # Paper: no exchange clock; the data's newest bar is the clock (live: run_plan's check_data_time).
            warn(self.ctx.logger, "FORGED_PLAN", "signed plan dated after the newest bar; refusing it",
                 cycle_id=plan.cycle_id, plan_id=plan.plan_id, reason=ahead)
            await self._reject(msg, "future_plan", ahead, plan.cycle_id, plan.plan_id)
            return
        if status is None and self.reconciler is not None and not await self.reconciler.before_plan():
            await self._reject(msg, "reconcile_halt", f"trading halted: {self.reconciler.halt}", plan.cycle_id,
                               plan.plan_id)
            return
        current = self.current_snapshot()
        if status is None and plan.basis_snapshot_id != current.snapshot_id:
            # Computed on a portfolio that no longer exists (an older plan ran since): never execute it.
            await self._reject(msg, "stale_basis", f"basis {plan.basis_snapshot_id} != current "
                               f"{current.snapshot_id}", plan.cycle_id, plan.plan_id)
            # Say again what the book is: if a newer (forged) message hid it, risk plans on it next time.
            await publish_snapshot(self.ctx.js, current, again=True)
            return
        # Rules read again if due, or if the plan names a pair listed since they were read.
        rules = await self.markets.for_symbols(leg.symbol for leg in plan.legs)
        heartbeat = asyncio.create_task(self._keep_in_progress(msg))
        try:
            run = await run_plan(plan, self.broker, self.journal, rules, self.limits, self.ctx.logger,
                                 self.marks, self.sync, self.live,
                                 redelivered=bool(msg.metadata and msg.metadata.num_delivered > 1))
            self.outage.answered()  # the exchange answered this plan's reads (a refusal before them says nothing)
        finally:
            heartbeat.cancel()
        snap = self.current_snapshot()
        await msg.ack()  # only after the commit
        await publish_fills(self.ctx.js, self.journal, run)
        await publish_snapshot(self.ctx.js, snap)
        if run.status == "rejected":
            self.ctx.health.inc("plans_rejected", reason=run.refusal)
        else:
            self.ctx.health.inc("plans_executed")
        self.ctx.health.inc("fills", len(run.new_fills))
        self.show_book(snap)
        self.ctx.health.set("last_commit_unix", time.time())
        info(self.ctx.logger, "CYCLE_COMMITTED", "plan executed and journaled", cycle_id=plan.cycle_id,
             plan_id=plan.plan_id, status=run.status, fills=len(run.new_fills), equity=snap.equity)
        if self.reconciler is not None and not self.reconciler.compared and not self.journal.unfinished_plans():
            # The boot left the books uncompared while this interrupted plan was unfinished: compare them now,
            # after the ack and the publishes (a failed read must not send a committed plan round again).
            try:
                await self.reconciler.check_books()
            except Exception as exc:
                warn(self.ctx.logger, "RECONCILE", "books not compared after the interrupted plan; the next plan "
                     "compares them (/readyz stays red until then)", error=f"{type(exc).__name__}: {exc}"[:300])

    @staticmethod
    async def _keep_in_progress(msg: Msg) -> None:
        """Tell JetStream a long plan (partial fills, settle waits) is still being worked on, so the short
        ack_wait only matters when this process is gone; a redelivery would be harmless, only wasteful."""
        while True:
            await asyncio.sleep(ACK_WAIT_S / 3)
            try:
                await msg.in_progress()
            except Exception:
                return


async def run(ctx: ServiceContext) -> None:
    s = ctx.settings
    # Keys first: a swapped risk key or a missing signing key stops the executor before it touches the journal
    # or the exchange (Executor loads them again; both reads are idempotent).
    trusted_key(s.keys, "executor", "risk")
    signing_key(s.keys, "executor")
    journal = await open_journal(ctx)
    if journal is None:
        return  # stopped while waiting for a writable journal
    broker = TimedBroker(await make_broker(s, ctx.logger, journal), ctx.health)
    kv = None if s.dry_run else await state_kv(ctx.js)  # the operator's adoption requests (live only)
    # No rules yet: boot reads them, retried like the rest of boot while the exchange does not answer.
    executor = Executor(ctx, journal, broker, {}, kv)
    await boot_when_possible(ctx, executor)
    sub = await durable_pull(ctx.js, CONSUMERS["executor"])
    alarm = RedeliveryAlarm(ctx.health, "executor")
    ctx.health.checks["mode"] = lambda: (True, "dry-run (paper broker)" if s.dry_run else f"live {s.exchange_id}")
    refresher = asyncio.create_task(keep_snapshot_fresh(ctx, executor))
    try:
        await pull_loop(sub, executor.on_message, ctx.stop, ctx.logger, alarm)
    finally:
        refresher.cancel()
        if executor.reconciler is not None:
            executor.reconciler.close()
        await broker.close()
        journal.close()


async def keep_snapshot_fresh(ctx: ServiceContext, executor: Executor) -> None:
    """Publish the newest snapshot again every SNAPSHOT_REFRESH_S until ``ctx.stop`` (a failure is said and tried
    at the next turn: the one published before stays until the stream's max_age)."""
    while not ctx.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), timeout=SNAPSHOT_REFRESH_S)
            return
        try:
            await publish_snapshot(ctx.js, executor.current_snapshot(), again=True)
        except Exception as exc:
            warn(ctx.logger, "BUS", "could not publish the snapshot again; trying at the next turn",
                 error=f"{type(exc).__name__}: {exc}"[:300])
