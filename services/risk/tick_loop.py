"""The risk tick between cycles: every ``AURA_RISK_TICK_S`` the kill-switch and the stops run on the latest prices.

Replay prices are the newest ``DataReady`` snapshot's closes; live, public ticker prices (no keys in risk).  Each
tick logs [RISK_TICK] and one [SL_CHECK] per position.  When it triggers, the exit plan goes through the same path
as a cycle plan (``Risk.sign_and_publish``): a signed ``PlanBody`` whose basis is the latest snapshot, verified by
the executor.  A tick runs under the service's cycle lock and skips while a plan is in flight, so it never
interleaves with a target and never makes the next cycle's plan stale.  The decision itself is pure
(``services.risk.tick``); this module is its I/O around the ``Risk`` service state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from services.risk.plan_body import build_plan_body, rules_of
from services.risk.prices import PriceRead, exit_volumes
from services.risk.sync_guard import READ_FAILED
from services.risk.tick import TickDecision, evaluate_tick, tick_target
from shared.health import HealthState
from shared.logging import error, info, warn

if TYPE_CHECKING:  # service.py imports this module: the class is only a type here
    from services.risk.service import Risk


# Failed ticks in a row that turn risk's /readyz red: one is a blip (a price read timing out); this many mean the
# stop-losses and the kill-switch are not being checked, which an operator must see (once a deleted bucket
# failed every tick for as long as it lasted while risk answered ready).  A tick whose price read lacks a held
# coin (a delisted pair, a venue that stopped quoting it) cannot check that coin's stop: it counts the same way,
# before and after the sync guard confirms the shortfall.
TICK_FAILURES_RED = 3


class TickHealth:
    """Risk's ``risk_tick`` readiness check: red after ``TICK_FAILURES_RED`` failed ticks in a row."""

    def __init__(self, health: HealthState) -> None:
        self.failures, self.last_error = 0, ""
        health.checks["risk_tick"] = self.check

    def check(self) -> tuple[bool, str]:
        if self.failures >= TICK_FAILURES_RED:
            return False, f"the last {self.failures} risk ticks failed (stops unchecked): {self.last_error}"
        return True, "ticking" if not self.failures else f"{self.failures} tick(s) failed: {self.last_error}"

    def ticked(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self.failures = 0
        else:
            self.failures, self.last_error = self.failures + 1, f"{type(exc).__name__}: {exc}"[:300]

    def judged(self, decision: TickDecision | None) -> None:
        """A tick that returned: every holding priced (green again), a holding unpriced (a failure), or skipped
        (no snapshot yet, a plan in flight: nothing was checked, so nothing changes).  A shortfall counts once
        confirmed too: the tick then runs with the coin at its last mark, which keeps the kill-switch going but
        can never trigger that coin's stop."""
        if decision is None:
            return
        verdict = decision.price_verdict
        if decision.outcome is not None and not verdict.shortfall:
            self.ticked()
            return
        self.failures += 1
        if verdict.status == READ_FAILED:
            self.last_error = f"price read failed: {verdict.reason}"[:300]
        else:
            self.last_error = f"held coins unpriced {sorted(verdict.shortfall)}: {verdict.reason}"[:300]


async def tick_loop(risk: Risk) -> None:
    """Tick every ``risk_tick_s`` until stop, under the cycle lock: a tick never interleaves with a target."""
    period = risk.ctx.settings.risk_tick_s
    health = TickHealth(risk.ctx.health)
    while not risk.ctx.stop.is_set():
        try:
            await asyncio.wait_for(risk.ctx.stop.wait(), timeout=period)
            return
        except TimeoutError:
            pass
        try:
            async with risk.lock:
                decision = await tick(risk)
            health.judged(decision)
        except Exception as exc:  # a failed tick is logged and retried next period, never fatal
            health.ticked(exc)
            risk.ctx.health.inc("risk_tick_errors")
            error(risk.ctx.logger, "RISK_TICK", "risk tick failed", error=f"{type(exc).__name__}: {exc}",
                  failed_in_a_row=health.failures)


async def tick(risk: Risk) -> TickDecision | None:
    """One tick: the kill-switch and the stops on the latest prices; a triggered exit is signed and published."""
    ctx = risk.ctx
    ctx.health.inc("risk_ticks")
    basis = await risk.inputs.snapshot()
    if basis is None:
        info(ctx.logger, "RISK_TICK", "tick skipped: no verified portfolio snapshot")
        return None
    if not risk.settled(basis):
        info(ctx.logger, "RISK_TICK", "tick skipped: a plan is in flight", plan_id=risk.inflight and
             risk.inflight.plan_id)
        return None
    params, version = await risk.params.current()
    latch = await risk.inputs.latch()
    held = sorted(s for s, q in basis.holdings.items() if q > 0)
    read: PriceRead | None = await risk.prices.read(held)
    # The data's bars, in the cycles' frame (a bar's open): the newest closed, what the cooldown has run to, and
    # the one these prices are of, what a latch now is stamped with (PriceRead).
    data_ms = read.bar_open_ms if read is not None else 0
    latch_ms = read.latch_ms if read is not None else 0
    if read is None and not held:
        # Nothing held: equity is the cash, known exactly; a missing price read changes nothing.  No data
        # time either (0, as data_ms): the host's clock is no time of the data's (the exchange's, live).
        read = PriceRead({}, [], data_ms, "no-prices", data_ms, latch_ms)
    latch = await risk.rearm(latch, params, data_ms, basis)
    halted = latch.halted
    prices = read.prices if read is not None else None
    rules = rules_of(read.markets) if read is not None else {}
    cost = await risk.costs.current()
    bar, volumes = await risk.inputs.bar_volumes(ctx.logger)
    if bar is not None and held:
        volumes = await exit_volumes(risk.prices, held, ctx.settings.timeframe, bar, volumes, ctx.logger)
    await risk.sent.seal(bar)
    decision = evaluate_tick(basis, prices, rules, params, cost.rate, latch, risk.guard, risk.marks, volumes,
                             risk.max_participation, risk.sent.on(bar, volumes), ctx.settings.reconcile_dust_usdt)
    risk.guard = decision.guard
    for check in decision.checks:
        info(ctx.logger, "SL_CHECK", f"{check.symbol}: {check.verdict}", symbol=check.symbol, qty=check.qty,
             entry=check.entry, price=check.price, stop_level=check.stop_level, take_level=check.take_level,
             verdict=check.verdict)
    outcome = decision.outcome
    info(ctx.logger, "RISK_TICK", f"tick: {decision.action}", action=decision.action, basis=basis.snapshot_id,
         positions=len(held), halted=halted, price_read=decision.price_verdict.status,
         equity=round(outcome.equity, 2) if outcome else None,
         drawdown=round(outcome.drawdown, 4) if outcome else None, params_version=version)
    if read is not None:
        risk.marks.update({s: p for s, p in read.prices.items() if p > 0})
    if outcome is None:
        warn(ctx.logger, "SYNC_GUARD", "price read incomplete; not acting on it", missing=decision.price_verdict
             .shortfall, reason=decision.price_verdict.reason)
        return decision
    assert read is not None
    ctx.health.set("drawdown", outcome.drawdown)
    target = tick_target(basis, read.prices, read.markets, params, version, read.as_of_ms, read.digest)
    await risk.latch(target.cycle_id, outcome, latch, params, latch_ms, basis)
    if outcome.legs:
        body = build_plan_body(target, basis, outcome, version, target.prices)
        await risk.sign_and_publish(body, bar, basis)
        ctx.health.inc("tick_plans")
        ctx.health.inc("plans_approved", gate=body.gate)
        warn(ctx.logger, "RISK_TICK", "tick triggered: exit plan signed and published", cycle_id=body.cycle_id,
             plan_id=body.plan_id, gate=body.gate, legs=[f"{x.side} {x.qty} {x.symbol} ({x.reason})"
                                                        for x in body.legs], basis=basis.snapshot_id)
    return decision
