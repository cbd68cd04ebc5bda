"""One plan's life cycle in the journal, without the bus: genesis, sync check, execute, snapshot, recovery.

The executor service wraps these with NATS (signature and basis checks, ack after commit, publishing), and
the crash-trial driver calls exactly the same functions in a process it kills with SIGKILL, so the crash
harness proves the code path that trades, not a copy of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import msgspec

from aura.strategy.params import equity_points
from aura.strategy.types import MarketRule
from services.executor.brokers.base import Broker, TransientBrokerError
from services.executor.brokers.paper import QUOTE, base_asset
from services.executor.exchange_calls import ExecutionLimits, rate_limit_pause, retried
from services.executor.execution import ExecutionResult, execute_plan
from services.executor.journal import Journal
from services.executor.live_guard import LiveGuard
from services.executor.portfolio import Portfolio, portfolio_from_fills
from services.executor.reconcile import reconcile
from services.risk.sync_guard import CONFIRMED, IN_SYNC, GuardState, Tolerance, Verdict, observe
from shared.contracts import PlanBody, PortfolioSnapshot, canonical_bytes, content_id
from shared.cycles import check_data_time, is_tick_cycle
from shared.logging import error, info, warn

FINAL_PLAN_STATES = ("executed", "partial", "rejected")
# Float sums of fills against the exchange's 8-decimal ledger differ by ~1e-9 per fill: not a missing position.
HOLDINGS_TOLERANCE = Tolerance(abs_tol=1e-5, rel_tol=1e-6)


@dataclass(frozen=True)
class SyncCheck:
    """Live mode: verify journal holdings against exchange balances before a new plan (see sync_guard)."""

    confirm_reads: int = 3
    max_reads: int = 8
    delay_s: float = 0.5
    # A confirmed shortfall worth at most this much (quote) is dust, as the book check (``books``) judges it: an
    # exit's leftover below a lot step converted or withdrawn must not refuse every plan, exits included, while
    # the book check calls the books in agreement (and so offers no halt an adoption could clear).
    dust_quote: float = 0.0


@dataclass(frozen=True)
class LivePolicy:
    """Live mode: what is checked against the exchange before and while a plan trades (see LiveGuard).

    ``plan_max_age_ms``: a new plan whose data bar opened longer ago than this (two bars plus a grace: the bar
    closed more than one bar plus the grace before now) is refused, by the exchange's clock ([STALE_PLAN]); so is
    one whose bar (``bar_ms`` long) has not closed by that clock, or a tick's read dated ahead of it.
    """

    max_price_deviation: float
    max_spread: float
    plan_max_age_ms: int
    bar_ms: int
    fee_rate: float = 0.001


@dataclass
class PlanRun:
    plan_id: str
    cycle_id: str
    status: str  # "executed" | "partial" | "rejected"
    reasons: list[str] = field(default_factory=list)
    new_fills: list[tuple[str, str, str, float, float, float]] = field(default_factory=list)
    snapshot_id: str = ""
    already_final: bool = False  # journaled before: nothing was done this time (a redelivery)
    refusal: str = ""  # why a rejected plan was refused ("stale_plan", "out_of_sync")


# --- portfolio and snapshots ---------------------------------------------------------------------------------


def journal_portfolio(journal: Journal) -> Portfolio:
    initial = journal.initial_cash()
    return portfolio_from_fills(initial if initial is not None else 0.0, journal.all_fills())


def ensure_genesis(journal: Journal, cash: float) -> bool:
    """Write the genesis snapshot once; True if it was written now."""
    if journal.latest_snapshot() is not None:
        return False
    journal.begin()
    journal.record_snapshot(content_id({"genesis": cash}, prefix="s-"), "genesis", "", "genesis", cash, {}, {}, cash)
    journal.event("genesis", "genesis", cash=cash)
    journal.commit()
    return True


def current_snapshot(journal: Journal, timeframe: str) -> PortfolioSnapshot:
    """The journal's newest portfolio with the equity of as many past bars as the longest kill-switch window
    allowed on ``timeframe`` (params.equity_points): 365 daily points, 4,000 hourly ones.  A fixed 365 cut a
    90-day window on hourly bars to 15 days live, so a slow bleed never latched (found by an audit)."""
    row = journal.latest_snapshot()
    assert row is not None, "genesis snapshot is written at boot"
    equity, equity_ms = journal.equity_history(equity_points(timeframe))
    return PortfolioSnapshot(snapshot_id=row.snapshot_id, cycle_id=row.cycle_id, plan_id=row.plan_id,
                             status=row.status, cash=row.cash, holdings=row.holdings,
                             entry_prices=row.entry_prices, equity=row.equity,
                             equity_history=equity, equity_history_ms=equity_ms,
                             committed_at_ms=row.committed_ts_ms)


def recent_marks(journal: Journal, plans: int = 64) -> dict[str, float]:
    """The newest price of each symbol in the last ``plans`` plans journaled: what a restarted executor values its
    holdings at until a plan brings prices.  With none it valued every holding at its entry price, so a cycle
    aborted right after a restart journaled an equity point that never was (BTC bought at 40,000, now at 30,000:
    +2,000 that day, -2,000 the next; found by an audit), a point of the history risk's kill-switch reads."""
    marks: dict[str, float] = {}
    for body in journal.recent_plan_bodies(plans):
        for symbol, price in (json.loads(body).get("prices") or {}).items():
            if symbol not in marks and isinstance(price, int | float) and price > 0:
                marks[symbol] = float(price)
    return marks


def write_snapshot(journal: Journal, cycle_id: str, plan_id: str, status: str, marks: dict[str, float]) -> str:
    """Inside an open transaction: journal the portfolio the fills imply, closing ``cycle_id``."""
    pf = journal_portfolio(journal)
    equity = round(pf.equity(marks), 8)
    ident = {"cycle_id": cycle_id, "plan_id": plan_id, "status": status, "cash": pf.cash, "holdings": pf.holdings}
    snapshot_id = content_id(ident, prefix="s-")
    journal.record_snapshot(snapshot_id, cycle_id, plan_id, status, pf.cash, pf.holdings, pf.entry_prices, equity)
    journal.event(cycle_id, "cycle_committed", status=status, plan_id=plan_id, snapshot_id=snapshot_id,
                  equity=equity)
    return snapshot_id


def beyond_dust(verdict: Verdict, dust_quote: float, prices: dict[str, float], logger: logging.Logger) -> Verdict:
    """``verdict`` as IN_SYNC when every asset it misses is worth at most ``dust_quote`` (an unpriced one never
    is dust), logged; otherwise unchanged."""
    worth = {a: q * (1.0 if a == QUOTE else prices.get(a, 0.0)) for a, q in verdict.shortfall.items()}
    priced = all(a == QUOTE or prices.get(a, 0.0) > 0 for a in worth)
    if not priced or any(value > dust_quote for value in worth.values()):
        return verdict
    info(logger, "SYNC_GUARD", "exchange balances short of the journal by dust only; trading on",
         shortfall=verdict.shortfall, worth_quote=round(sum(worth.values()), 8), dust_quote=dust_quote)
    return Verdict(IN_SYNC, verdict.shortfall, verdict.streak, "shortfall within dust")


# --- the sync guard where positions are read from the broker --------------------------------------------------


def expected_balances(journal: Journal) -> dict[str, float]:
    return portfolio_balances(journal_portfolio(journal))


def portfolio_balances(pf: Portfolio) -> dict[str, float]:
    """asset -> quantity the exchange should hold for ``pf`` (the quote asset: its cash)."""
    out = {QUOTE: pf.cash}
    for symbol, qty in pf.holdings.items():
        out[base_asset(symbol)] = out.get(base_asset(symbol), 0.0) + qty
    return out


async def verify_holdings(journal: Journal, broker: Broker, logger: logging.Logger, check: SyncCheck,
                          expected: dict[str, float] | None = None, prices: dict[str, float] | None = None,
                          ) -> Verdict:
    """Read exchange balances until the journal's holdings are confirmed present, or a shortfall is confirmed
    on consecutive good reads.  Returns the last verdict (READ_FAILED / UNCONFIRMED if reads ran out); a
    confirmed shortfall worth at most ``check.dust_quote`` at ``prices`` (asset -> quote) is IN_SYNC."""
    want = expected if expected is not None else expected_balances(journal)
    state = GuardState()
    verdict = Verdict("read_failed", {}, 0, "no read made")
    for attempt in range(1, check.max_reads + 1):
        pause = check.delay_s
        try:
            observed: dict[str, float] | None = await broker.fetch_free_balances()
        except TransientBrokerError as exc:
            observed = None
            pause = max(pause, rate_limit_pause(exc))
            warn(logger, "SYNC_GUARD", "balance read failed", attempt=attempt, retry_in_s=pause, error=str(exc)[:200])
        verdict, state = observe(state, want, observed, confirm_reads=check.confirm_reads,
                                 tolerance=HOLDINGS_TOLERANCE)
        if verdict.status == IN_SYNC:
            if attempt > 1:
                info(logger, "SYNC_GUARD", "exchange balances match the journal again; the earlier read was a "
                     "glitch", attempt=attempt)
            return verdict
        if verdict.status == CONFIRMED:
            return beyond_dust(verdict, check.dust_quote, prices or {}, logger)
        if verdict.shortfall:
            warn(logger, "SYNC_GUARD", "exchange shows less than the journal; not acting on an unconfirmed read",
                 attempt=attempt, shortfall=verdict.shortfall, reason=verdict.reason)
        await asyncio.sleep(pause)
    return verdict



# --- one plan -------------------------------------------------------------------------------------------------


def refuse_plan(journal: Journal, plan: PlanBody, marks: dict[str, float], reason: str, detail: str,
                close_cycle: bool = True, **fields: object) -> PlanRun:
    """Journal ``plan`` as rejected (nothing traded) and close its cycle with a snapshot (``close_cycle``: not for
    a plan dated ahead of the exchange's clock, whose cycle would become the journal's newest bar, after which
    every genuine abort would be ignored as older)."""
    reasons = [*plan.reasons, f"{detail}; plan refused, nothing traded"]
    journal.begin()
    journal.record_plan(plan.plan_id, plan.cycle_id, plan.gate, plan.params_version, plan.basis_snapshot_id,
                        canonical_bytes(plan).decode(), reasons, status="rejected")
    journal.set_plan_status(plan.plan_id, "rejected", reasons)  # it may have been journaled as executing
    journal.skip_pending_intents(plan.plan_id, detail)
    journal.event(plan.cycle_id, "plan_rejected", reason=reason, plan_id=plan.plan_id, **fields)
    snapshot_id = write_snapshot(journal, plan.cycle_id, plan.plan_id, "rejected", marks) if close_cycle else ""
    journal.commit()
    return PlanRun(plan.plan_id, plan.cycle_id, "rejected", reasons, snapshot_id=snapshot_id, refusal=reason)


async def run_plan(plan: PlanBody, broker: Broker, journal: Journal, rules: dict[str, MarketRule],
                   limits: ExecutionLimits, logger: logging.Logger, marks: dict[str, float],
                   sync: SyncCheck | None = None, live: LivePolicy | None = None,
                   redelivered: bool = False) -> PlanRun:
    """Execute ``plan`` (or finish it after a crash) and close its cycle with a snapshot, idempotently.

    ``live``: a *new* plan on data older than ``plan_max_age_ms`` by the exchange's clock is refused (a plan
    under way that old settles what may be on the exchange and sends nothing more), and every new leg is priced,
    capped and budgeted at the exchange's price (LiveGuard).
    ``sync`` (live mode): before a *new* plan, the journal's holdings must be confirmed on the exchange.  A
    confirmed shortfall rejects the plan (no order, no liquidation: a human must look); reads that never
    confirm anything raise TransientBrokerError so the plan is retried later.  A plan already under way is
    finished without the checks: its own orders may be what the balances are missing.
    ``redelivered``: the bus delivered this plan before.  If the journal does not know it, an earlier delivery
    may still have placed its orders (a journal that lost its newest commits: a lost WAL), so its legs are
    looked up before any is placed, as a resumed plan's are; the reconciliation's dust allowance would hide a
    small leg filled twice.
    """
    status = journal.plan_status(plan.plan_id)
    if status in FINAL_PLAN_STATES:
        return PlanRun(plan.plan_id, plan.cycle_id, str(status), already_final=True)
    marks.update(plan.prices)
    # A plan journaled as executing whose legs never reached the exchange (an outage, a refused key or a disk
    # fault hit before its first order) has its data and holdings checked again, as a new one's are, else it
    # would trade whenever the fault clears, however old its bar by then.
    fresh = status is None or (status == "executing" and not journal.plan_reached_exchange(plan.plan_id))
    stale = ""
    if live is not None:
        now = await retried(broker.fetch_time, limits, logger, "STALE_PLAN", "exchange clock unreadable; retrying",
                            "exchange clock unreadable")
        # A bar plan's as_of is its bar's open, a tick's the moment risk read the venue's prices (no bar).
        why = check_data_time(plan.as_of_ms, now, 0 if is_tick_cycle(plan.cycle_id) else live.bar_ms,
                              live.plan_max_age_ms)
        if why:
            kind, _, detail = why.partition(": ")
            why = f"{kind} plan: {detail}"
            fields = {"plan_id": plan.plan_id, "cycle_id": plan.cycle_id, "as_of_ms": plan.as_of_ms,
                      "exchange_ms": now, "max_age_ms": live.plan_max_age_ms}
            if fresh:
                error(logger, "STALE_PLAN", "plan on data too old, or not yet closed, by the exchange's clock; "
                      "refusing it", **fields)
                return refuse_plan(journal, plan, marks, "stale_plan" if kind == "stale" else "future_plan", why,
                                   close_cycle=kind == "stale", as_of_ms=plan.as_of_ms, exchange_ms=now)
            # Under way when the process stopped (an outage, a crash): what may be on the exchange is settled,
            # but no leg is sent on data this old; the next plan decides again on the market as it is.
            stale = f"{why}; not sent"
            warn(logger, "STALE_PLAN", "resumed plan's data is out of date: its unsent legs are not sent", **fields)
    if fresh and sync is not None:
        # Dust is valued at the marks (the plan's prices, which risk checked against the venue, and the last
        # plans'), else at the journal's entry prices (a coin no plan priced since a restart).
        entries = journal_portfolio(journal).entry_prices
        prices = {base_asset(symbol): px for symbol, px in {**entries, **marks}.items() if px > 0}
        verdict = await verify_holdings(journal, broker, logger, sync, prices=prices)
        if verdict.status == CONFIRMED:
            error(logger, "SYNC_GUARD", "exchange balances confirmed short of the journal; refusing the plan",
                  plan_id=plan.plan_id, cycle_id=plan.cycle_id, shortfall=verdict.shortfall)
            return refuse_plan(journal, plan, marks, "out_of_sync", f"sync guard: exchange balances short of the "
                               f"journal {verdict.shortfall} ({verdict.reason})", shortfall=verdict.shortfall)
        if verdict.status != IN_SYNC:
            raise TransientBrokerError(f"holdings could not be verified on the exchange ({verdict.reason})")
    journal.begin()
    journal.record_plan(plan.plan_id, plan.cycle_id, plan.gate, plan.params_version, plan.basis_snapshot_id,
                        canonical_bytes(plan).decode(), plan.reasons)
    journal.set_plan_status(plan.plan_id, "executing")
    journal.event(plan.cycle_id, "plan_received" if status is None else "plan_resumed", plan_id=plan.plan_id,
                  legs=len(plan.legs), gate=plan.gate)
    journal.commit()
    guard = None if live is None else LiveGuard(live.max_price_deviation, live.max_spread,
                                                  journal_portfolio(journal).cash, live.fee_rate)
    # A resumed plan's legs are looked up on the exchange before any is placed, whatever the journal says of them:
    # a journal that lost its newest commits (a lost WAL) can show a placed leg as never sent, or lose the plan.
    result: ExecutionResult = await execute_plan(plan, broker, journal, rules, limits, logger, guard,
                                                 resumed=status is not None or redelivered, stale=stale)
    reasons = [*plan.reasons, *result.reasons]
    journal.begin()
    journal.set_plan_status(plan.plan_id, result.status, reasons)
    snapshot_id = write_snapshot(journal, plan.cycle_id, plan.plan_id, result.status, marks)
    journal.commit()
    return PlanRun(plan.plan_id, plan.cycle_id, result.status, reasons, result.new_fills, snapshot_id)


def journaled_plan(journal: Journal, plan_id: str) -> PlanBody:
    body = journal.plan_body(plan_id)
    if body is None:
        raise KeyError(plan_id)
    return msgspec.json.decode(body, type=PlanBody)


async def recover(journal: Journal, broker: Broker, rules: dict[str, MarketRule], limits: ExecutionLimits,
                  logger: logging.Logger, marks: dict[str, float], live: LivePolicy | None = None,
                  sync: SyncCheck | None = None) -> list[PlanRun]:
    """Boot: reconcile open intents, then finish every plan a crash interrupted (its body was verified and
    journaled before any order).  The bus redelivers the same plan later; it then finds it final.  One that never
    reached the exchange is checked as a new plan is (its data's age, and with ``sync`` the holdings)."""
    await reconcile(journal, broker, logger, limits)
    runs = []
    for plan_id in journal.unfinished_plans():
        plan = journaled_plan(journal, plan_id)
        info(logger, "BOOT", "finishing a plan interrupted by a crash", plan_id=plan_id, cycle_id=plan.cycle_id)
        runs.append(await run_plan(plan, broker, journal, rules, limits, logger, marks, sync=sync, live=live))
    return runs
