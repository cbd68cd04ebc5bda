"""Risk service shell: the only process that can approve a plan (it alone holds the signing key).

For each target it reads the executor's newest portfolio snapshot (the plan's basis), the exact parameter
version the signal stage used, and the kill-switch latch, runs ``risk_plan`` (gates in order: kill-switch,
stop-loss/take-profit, cost-benefit) and signs the result.  Costs are priced at fee + slippage
(``services/risk/costs.py``: the paper broker's fee in a dry run, the venue's taker fee live).

Between cycles a risk tick (every ``AURA_RISK_TICK_S``, ``services/risk/tick_loop.py``) runs the kill-switch and
the stops on the latest prices, logging [RISK_TICK] and [SL_CHECK]; a triggered exit goes through the same signed
``PlanBody`` path as a cycle plan.  Ticks and targets are serialised (``Risk.lock``), and neither starts from a
basis while a plan it published is still in flight, so a tick can never make the next cycle's plan stale.

The kill-switch latch ([KILL_SWITCH]) follows the strategy's policy (``aura.strategy.risk_gates``): it latches when
the rolling drawdown breaches its threshold (or the drawdown since the last reset reaches ``kill_switch_cap``), and
a latched, uncapped switch re-arms by itself ``kill_switch_cooldown`` bars of data after it latched (counted on
the targets' and ticks' ``as_of_ms``, never on a clock); ``aura risk reset`` clears it at any time.

Ingest's ``DataStale`` notice (an incomplete snapshot) means "do not trade on it": that bar never produces a
target, and risk refuses any target computed on data older than the newest notice (logged [DATA_STALE],
dead-lettered ``stale_data``, the cycle aborted so it still ends in the journal).  A notice dated more than one
bar after the data's clock (``stale.py``) is refused (dead-lettered ``stale_out_of_bounds``): it would block every
later target.

Nothing a peer publishes is trusted as is (``services.risk.inputs``, ``services.risk.verify``): a target is
planned only on the prices, rules and forecasts of the data ingest announced for its cycle, a snapshot only if
the executor signed it, parameters only if the optimizer or operator signed them.  A target that disagrees is
refused ([FORGED_TARGET], dead-lettered, counted) and its cycle ends in the journal as aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any, NoReturn

import msgspec

from aura.strategy.capacity import decision_bar_volumes
from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import RiskOutcome, risk_plan
from aura.strategy.risk_gates import rearm_due
from aura.strategy.schedule import timeframe_ms
from services.risk.bar_budget import BarBudget
from services.risk.costs import Costs
from services.risk.inflight import TRADED, FlightTracking, InFlight
from services.risk.inputs import RiskInputs
from services.risk.latch import LatchDoc, after_decision, rearmed
from services.risk.plan_body import build_plan_body, rules_of, targets_of
from services.risk.prices import PriceSource, make_price_source, venue_checked_bar
from services.risk.stale import follow_notices, notice_clock
from services.risk.sync_guard import GuardState
from services.risk.tick import Latch, committed_peak, latch_view, portfolio_state
from services.risk.tick_loop import tick_loop
from services.risk.verify import ForgedTarget, SupersededTarget, check_announcement, check_target
from shared.bus import durable_pull, publish, state_kv
from shared.consumer import RedeliveryAlarm, Reject, handle, pull_loop
from shared.contracts import (
    CONSUMERS,
    CycleAborted,
    DataStale,
    PlanBody,
    PortfolioSnapshot,
    TargetPortfolio,
)
from shared.credentials import PARAMS_SIGNERS, trusted_keys
from shared.cycles import check_data_time, notice_problem
from shared.live_params import ParamsError
from shared.logging import error, info, warn
from shared.params_tracker import ParamsTracker
from shared.service import ServiceContext, warm_decision_kernels
from shared.signing import sign_plan

INFLIGHT_WAIT_S = 10.0  # how long a target waits for the executor to close a plan this service just published
MAX_CYCLE_ID = 64  # an abort is published only for a cycle id this short (a forged target's may be anything)


class Risk(FlightTracking):
    def __init__(self, ctx: ServiceContext, inputs: RiskInputs, prices: PriceSource, params: ParamsTracker,
                 costs: Costs, sent: BarBudget) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.inputs = inputs
        self.prices = prices
        self.params = params
        # Fee + slippage per unit of notional (dry run: the paper broker's; live: the venue's taker fee).
        self.costs = costs
        # Live: a target on a bar that closed more than one bar plus the grace before the venue's clock is refused.
        self.bar_ms = timeframe_ms(s.timeframe)  # the kill-switch cooldown's unit
        self.max_age_ms = 2 * self.bar_ms + int(s.plan_grace_s * 1000)
        self.lock = asyncio.Lock()  # one decision at a time: a tick never interleaves with a target
        self.inflight: InFlight | None = None
        self.guard = GuardState()
        self.marks: dict[str, float] = {}
        # The newest bar ingest declared incomplete: a target computed on data older than it is superseded.
        self.stale: DataStale | None = None
        self.max_participation = s.max_participation  # of the decision bar's volume, per leg (capacity.py)
        self.sent = sent  # what plans on the current decision bar sent (the cap is on the bar), kept in aura_state
        # The cycle traded last, the plan in flight, the cycles whose plan never closed (inflight.py).
        self.traded = ""
        self.unclosed: OrderedDict[str, str] = OrderedDict()

    # -- basis --------------------------------------------------------------------------------------------
    async def basis(self, wait_inflight_s: float) -> PortfolioSnapshot | None:
        """The newest verified snapshot, once the plan this service published last has been closed by the
        executor (or ``wait_inflight_s`` ran out: a plan the executor refused never gets a snapshot)."""
        deadline = time.monotonic() + wait_inflight_s
        for _ in range(50):  # the executor publishes a genesis snapshot at boot: give it a moment on a cold start
            snap = await self.inputs.snapshot()
            if snap is not None:
                break
            await asyncio.sleep(0.1)
        else:
            return None
        while self.inflight is not None and snap.plan_id != self.inflight.plan_id:
            if time.monotonic() >= deadline or self.settled(snap):
                break
            await asyncio.sleep(0.05)
            snap = await self.inputs.snapshot() or snap
        if self.inflight is not None and snap.plan_id == self.inflight.plan_id:
            self.landed(snap)
        return snap

    async def rearm(self, latch: Latch, params: StrategyParams, as_of_ms: int, basis: PortfolioSnapshot) -> Latch:
        """Re-arm a latched switch whose cooldown has run by the bar ``as_of_ms`` (0: no data time, no re-arm)."""
        doc = self.inputs.last_latch
        latched_ms = latch.latched_at_ms or as_of_ms  # unknown: stamped at this decision, the cooldown starts here
        if doc is None or as_of_ms <= 0 or not rearm_due(latch.halted, latch.capped, latched_ms, as_of_ms,
                                                          params.kill_switch_cooldown, self.bar_ms):
            return latch
        doc = rearmed(doc, as_of_ms, basis.committed_at_ms, committed_peak(basis, latch))
        await self.inputs.store_latch(doc)
        warn(self.ctx.logger, "KILL_SWITCH", "re-armed after its cooldown; drawdown is measured from here on",
             latched_at_ms=latch.latched_at_ms, rearmed_at_ms=as_of_ms, cooldown_bars=params.kill_switch_cooldown)
        return latch_view(doc)

    async def latch(self, cycle_id: str, outcome: RiskOutcome, latch: Latch, params: StrategyParams,
                    as_of_ms: int, basis: PortfolioSnapshot) -> None:
        """Keep the latch in step with the decision: latched, capped, when it re-arms, the cap's peak."""
        doc = self.inputs.last_latch or LatchDoc(halted=latch.halted)
        new = after_decision(doc, outcome, cycle_id, as_of_ms, params.kill_switch_cooldown, self.bar_ms,
                             committed_peak(basis, latch))
        # A higher peak alone is written only while the cap is on (it is what the cap measures from); otherwise it
        # rides along with the next write, so an uneventful cycle never rewrites the latch.
        material = msgspec.structs.replace(new, peak_equity=doc.peak_equity) != doc
        if not material and not (params.kill_switch_cap < 1.0 and new.peak_equity != doc.peak_equity):
            return
        await self.inputs.store_latch(new)
        if new.halted and not doc.halted:
            warn(self.ctx.logger, "KILL_SWITCH", "rolling drawdown breached; liquidating and latching halt",
                 cycle_id=cycle_id, drawdown=round(outcome.drawdown, 4), latched_at_ms=new.latched_at_ms,
                 rearm_at_ms=new.rearm_at_ms)
        if new.capped and not doc.capped:
            warn(self.ctx.logger, "KILL_SWITCH", "drawdown since the last reset reached the cap; latched until "
                 "`aura risk reset`", cycle_id=cycle_id, drawdown_since_reset=round(outcome.drawdown_since_reset, 4),
                 cap=params.kill_switch_cap)

    async def sign_and_publish(self, body: PlanBody, bar: int | None, basis: PortfolioSnapshot) -> None:
        # Write-ahead: the bar's count takes the legs before they go out (bar_budget.py); if it cannot, nothing goes.
        await self.sent.record(bar, body.legs)
        approved = sign_plan(body, self.inputs.key)
        approved = msgspec.structs.replace(approved, emitted_at_ms=int(time.time() * 1000))
        try:
            await publish(self.ctx.js, approved, msg_id=body.plan_id)
        except Exception:
            self.sent.unsend(bar, body.legs)
            raise
        # The bar the count took the legs on (``bar`` None: the one it was on), for a give-back (gone_unfilled).
        sells = tuple(leg for leg in body.legs if leg.side == "sell")
        self.inflight = InFlight(body.plan_id, time.monotonic(), body.cycle_id, self.sent.count.bar_ms, sells,
                                 {leg.symbol: basis.holdings.get(leg.symbol, 0.0) for leg in sells}, basis.snapshot_id)
        for leg in body.legs:  # reasons come from risk's own pipeline (rebalance.REASONS): a bounded label set
            self.ctx.health.inc("legs_approved", reason=leg.reason)

    # -- cycles -------------------------------------------------------------------------------------------
    async def on_target(self, target: TargetPortfolio) -> None:
        async with self.lock:
            await self._on_target(target)

    async def on_stale(self, stale: DataStale, at_boot: bool = False) -> None:
        """Adopt a stale-data notice; Reject one of another timeframe, not named by its bar, or dated more than a
        bar ahead (shared/cycles.py, with risk's clock from stale.py).
        Under the cycle lock: a target on older data must not slip through while the clock is read."""
        async with self.lock:
            s = self.ctx.settings
            now, clock = await notice_clock(self.prices, self.inputs, s.ingest_source, self.stale)
            problem = notice_problem(stale, s.timeframe, now, clock)
            if problem:
                self.ctx.health.inc("stale_notices_refused")
                raise Reject("stale_out_of_bounds", problem)
            if self.stale is not None and stale.as_of_ms < self.stale.as_of_ms:
                return
            self.stale = stale
            self.ctx.health.set("stale_as_of_ms", stale.as_of_ms)
            if at_boot:
                # Adopted, not news: it was warned (and alerted) when it arrived.  A warning here re-alerted a
                # days-old notice as a fresh incident on every restart of risk (found by an audit).
                info(self.ctx.logger, "DATA_STALE", "newest stale-data notice at boot: no plan on data older than it",
                     cycle_id=stale.cycle_id, missing=stale.missing, reason=stale.reason)
            else:
                warn(self.ctx.logger, "DATA_STALE", "ingest reports an incomplete snapshot: no plan on data older "
                     "than it", cycle_id=stale.cycle_id, missing=stale.missing, reason=stale.reason)

    async def planned_already(self, target: TargetPortfolio, basis: PortfolioSnapshot | None = None) -> bool:
        """Whether ``target``'s cycle gets no plan (inflight.py ``not_to_plan``): then the target is acked with a
        log line (a redelivery, an ingest retry, or a copy sent to hold the ticks off).  A cycle whose plan on this
        basis never closed also ends in the journal, aborted, so ingest stops announcing it again."""
        state = self.not_to_plan(target.cycle_id, basis)
        if not state:
            return False
        self.ctx.health.inc("targets_not_replanned")
        info(self.ctx.logger, "IDEMPOTENCY", f"cycle already {state}; target not planned again",
             cycle_id=target.cycle_id, target_id=target.target_id[:40])
        if state.endswith("never closed") and 0 < len(target.cycle_id) <= MAX_CYCLE_ID:
            await publish(self.ctx.js, CycleAborted(cycle_id=target.cycle_id, stage="risk",
                                                    reason=f"not planned again: {state}"),
                          msg_id=f"abort-risk-{target.cycle_id}")
        return True

    async def refuse(self, target: TargetPortfolio, reason: str, detail: str, forged: bool = False) -> NoReturn:
        """Refuse ``target``: its cycle ends in the journal as aborted, the message is dead-lettered."""
        if forged:
            self.ctx.health.inc("forged_targets")
            error(self.ctx.logger, "FORGED_TARGET", f"target refused: {detail}"[:500], cycle_id=target.cycle_id[:80],
                  target_id=target.target_id[:80])
        if 0 < len(target.cycle_id) <= MAX_CYCLE_ID:
            await publish(self.ctx.js, CycleAborted(cycle_id=target.cycle_id, stage="risk",
                                                    reason=f"{reason}: {detail}"[:500]),
                          msg_id=f"abort-risk-{target.cycle_id}")
        raise Reject(reason, detail)

    async def _on_target(self, target: TargetPortfolio) -> None:
        ctx = self.ctx
        if self.stale is not None and target.as_of_ms < self.stale.as_of_ms:
            # A target on a bar older than one ingest already declared incomplete (signal lagged behind the
            # data): its prices are superseded by a bar we cannot see in full, so it is not traded.
            await self.refuse(target, "stale_data", f"data stale since {self.stale.cycle_id}; target on older data "
                              "refused")
        now = await self.prices.exchange_ms()
        why = check_data_time(target.as_of_ms, now, self.bar_ms, self.max_age_ms)
        if why is not None:
            warn(ctx.logger, "STALE_PLAN", "target on data the exchange's clock refutes; not planning on it",
                 cycle_id=target.cycle_id, as_of_ms=target.as_of_ms, exchange_ms=now, why=why)
            await self.refuse(target, "stale_plan" if why.startswith("stale") else "future_data", why,
                              forged=not why.startswith("stale"))
        ready = await self.inputs.newest_ready()
        try:
            check_announcement(target, ready, self.ctx.settings.timeframe)
        except SupersededTarget as exc:
            await self.refuse(target, "superseded", str(exc))
        except ForgedTarget as exc:
            await self.refuse(target, "forged_target", str(exc), forged=True)
        assert ready is not None
        # The target names the version signal made it with, and its gates (kill-switch, cooldown, stop-loss, cap)
        # are the cycle's: never older than the one in force, or a compromised signal could pick an older signed
        # version (or the shipped defaults, version 0) to re-arm a latch or loosen a stop.  An honest signal is
        # behind only for the moment a promotion takes to reach it; that cycle is refused, the next one is on time.
        in_force_params, in_force = await self.params.current()
        if target.params_version < in_force:
            await self.refuse(target, "superseded_params", f"target made with parameter version "
                              f"{target.params_version}; version {in_force} is in force")
        version = target.params_version
        if version == in_force and version > 0:
            # The version in force, as the tracker verified it: read again by revision, it may be gone from the
            # key's 64-entry history (a flood of junk writes), and every target would be refused.  (Version 0, the
            # defaults, is never stored: read_version judges it by the operator's envelope as any version.)
            params = in_force_params
        else:
            try:
                params, version = await self.inputs.params_at(version)
            except ParamsError as exc:
                await self.refuse(target, "bad_params", str(exc), forged=True)
        panel = await self.inputs.panel(ready.digest)
        try:
            prices = check_target(target, ready, panel, params)
        except ForgedTarget as exc:
            await self.refuse(target, "forged_target", str(exc), forged=True)
        if await self.planned_already(target):
            return
        basis = await self.basis(INFLIGHT_WAIT_S)
        if basis is None:
            await self.refuse(target, "no_basis", "no verified executor snapshot available; cycle aborted")
        assert basis is not None
        if basis.cycle_id == target.cycle_id and basis.status in TRADED:
            self.traded = target.cycle_id  # traded by a plan of an earlier run of this process
        if await self.planned_already(target, basis):  # before the venue is asked: copies cost no request
            return
        held = sorted(s for s, q in basis.holdings.items() if q > 0)
        wanted = sorted(s for s, w in target.weights.items() if w > 0)
        bar = int(panel.timestamps[-1])
        prices, volumes, forged = await venue_checked_bar(self.prices, held, wanted, ctx.settings.timeframe, bar,
                                                          prices, decision_bar_volumes(panel), ctx.logger)
        if forged:
            await self.refuse(target, "forged_data", forged, forged=True)
        latch = await self.rearm(await self.inputs.latch(), params, target.as_of_ms, basis)
        cost = await self.costs.current()
        # A held pair without a price in this data (delisted, halted) is valued at its last mark, never at 0: a
        # missing quote is not a loss, and must not trip the kill-switch (the tick does the same).
        marks = {**basis.entry_prices, **self.marks}
        # Live, the venue's own rules: announced by ingest alone, a minimum notional of 1e12 for the held coins
        # rounded a cycle's stop-loss and kill-switch exits to nothing (the ticks already read the venue's).
        rules = await self.prices.market_rules(sorted({*held, *wanted, *prices}))
        await self.sent.seal(bar)
        outcome = risk_plan(targets_of(target), portfolio_state(basis, latch), prices,
                            rules_of(ready.markets) if rules is None else rules,
                            params, cost.rate, marks=marks, volumes=volumes,
                            max_participation=self.max_participation, sent=self.sent.on(bar, volumes))
        await self.latch(target.cycle_id, outcome, latch, params, target.as_of_ms, basis)
        body = build_plan_body(target, basis, outcome, version, prices)
        await self.sign_and_publish(body, bar, basis)
        self.marks.update(prices)
        ctx.health.inc("plans_approved", gate=body.gate)
        ctx.health.set("drawdown", outcome.drawdown)  # `halted` follows the latch itself (RiskInputs._in_force)
        info(ctx.logger, "PLAN_APPROVED", "plan signed and published", cycle_id=body.cycle_id, plan_id=body.plan_id,
             gate=body.gate, legs=len(body.legs), basis=basis.snapshot_id, params_version=version)


async def run(ctx: ServiceContext) -> None:
    s = ctx.settings
    if not s.private_key_path.is_file():
        # Never mint a key here: the executor trusts one public key, and a silently new pair would only
        # get every plan rejected. `aura keygen` (or the compose keygen job) creates the pair once.
        raise RuntimeError(f"risk private key missing at {s.private_key_path} (setting keys_dir); run `aura keygen`")
    kv = await state_kv(ctx.js)
    inputs = RiskInputs(ctx.js, kv, s, ctx.health, ctx.logger)
    try:  # the `halted` gauge shows the stored latch from the start, not 0 until a first decision
        await inputs.latch()
    except Exception as exc:  # the bus stumbled: every cycle and tick reads the latch again before it decides
        warn(ctx.logger, "KILL_SWITCH", "latch not read at start; the halted gauge waits for the first decision",
             error=f"{type(exc).__name__}: {exc}"[:200])
    if not await warm_decision_kernels(ctx):
        return
    source = make_price_source(ctx)
    costs = Costs(s, source, ctx.logger)
    ctx.health.checks["cost_rate"] = costs.readiness
    if await costs.boot(ctx.stop) is None:  # live: no plan is priced before the venue's fee is known
        await source.close()
        return
    tracker = ParamsTracker(ctx.js, trusted_keys(s.keys, "risk", PARAMS_SIGNERS), ctx.health, ctx.logger,
                            max_loss_bound=ctx.settings.max_loss_bound, timeframe=s.timeframe)
    await tracker.current()
    follower = asyncio.create_task(tracker.follow(ctx.stop))
    budget = await BarBudget.load(ctx.js, inputs.key, s.max_participation, ctx.health, ctx.logger)
    risk = Risk(ctx, inputs, source, tracker, costs, budget)
    await follow_notices(ctx, risk.on_stale)
    sub = await durable_pull(ctx.js, CONSUMERS["risk"])
    alarm = RedeliveryAlarm(ctx.health, "risk")
    ctx.health.checks["signing_key"] = lambda: (True, "loaded")
    ticker = asyncio.create_task(tick_loop(risk)) if s.risk_tick_s > 0 else None
    info(ctx.logger, "BOOT", "risk ready", tick_s=s.risk_tick_s, prices=source.name)

    async def on_msg(msg: Any) -> None:
        await handle(ctx, msg, TargetPortfolio, risk.on_target)

    try:
        await pull_loop(sub, on_msg, ctx.stop, ctx.logger, alarm)
    finally:
        follower.cancel()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ticker
        await source.close()
