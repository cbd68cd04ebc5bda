"""Ingest service shell: reveal one closed bar per cycle, ship the snapshot through NATS, announce it.

The candles travel in the JetStream object store under their content digest, so no other service reads
ingest's files.  Cycles are paced by the executor: the next "data ready" goes out only after the previous
cycle has ended in the executor's journal (its snapshot arrives) or ``cycle_timeout_s`` passed, so every
plan is computed against the portfolio the previous plan left behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from nats.aio.msg import Msg
from nats.js.object_store import ObjectStore

from services.ingest.replay import ReplayStep
from services.ingest.sources import ReplaySource, SyncSource, fixed_symbols
from shared.allowance import own_subject_only
from shared.bus import kv_get, publish, state_kv
from shared.candles import digest, encode_panel
from shared.contracts import (
    CANDLE_OBJECT_MAX_BYTES,
    CycleAborted,
    DataReady,
    DataStale,
    MarketRuleMsg,
    PortfolioSnapshot,
    decode,
)
from shared.logging import info, warn
from shared.objects import candle_writer
from shared.service import ServiceContext
from shared.state_keys import ingest_cursor_key, ingest_held_key


async def run(ctx: ServiceContext) -> None:
    s = ctx.settings
    store = await candle_writer(ctx.js)
    kv = await state_kv(ctx.js)
    cursor_key = ingest_cursor_key(s.ingest_source, s.timeframe)
    raw, _ = await kv_get(kv, cursor_key)
    last_done = int(raw) if raw is not None else None
    source: ReplaySource | SyncSource
    live: SyncSource | None = None
    # The pairs the portfolio holds, from the executor's newest snapshot: kept so that the first cycle after a
    # restart (before any snapshot arrives) still keeps held pairs in the universe (services/ingest/venue.py).
    held_key = ingest_held_key(s.timeframe)
    if s.ingest_source == "sync":
        # The market rules come from the venue with each step; the bundled markets.json is never read here.
        source = live = SyncSource(s, fixed_symbols(s), last_done, ctx.logger, s.exchange_id)
        raw_held, _ = await kv_get(kv, held_key)
        live.held = _held_of(raw_held)
    else:
        source = ReplaySource(s, last_done, ctx.logger)

    ended: dict[str, asyncio.Event] = {}
    attempts: dict[str, int] = {}
    # The stale cycle the executor has already closed as aborted while the source keeps retrying its bar: one
    # abort per bar is enough for the journal, so further stale polls of it publish nothing.
    aborted_stale: str | None = None

    async def on_snapshot(msg: Msg) -> None:
        try:
            snap = decode(msg.data, PortfolioSnapshot)
        except Exception:
            return
        ended.setdefault(snap.cycle_id, asyncio.Event()).set()
        if live is None:
            return
        # Only the executor may publish snapshots (bus permissions); what they hold only ever adds pairs the
        # venue trades to the universe, or names a delisted one in a report, so the signature is not needed here.
        held = held_pairs(snap, s.reconcile_dust_usdt)
        if held != live.held:
            live.held = held
            try:
                await kv.put(held_key, json.dumps(sorted(held)).encode())
            except Exception as exc:  # the next snapshot writes it again; only a restart would miss it
                warn(ctx.logger, "UNIVERSE", "could not store the held pairs", error=f"{type(exc).__name__}: {exc}")

    await ctx.nc.subscribe(PortfolioSnapshot.SUBJECT,
                           cb=own_subject_only(ctx, PortfolioSnapshot.SUBJECT, on_snapshot))
    # Sync: red once the newest bar the venue closed waits longer than this to be published complete; a poll or
    # two of a provider's hiccup is normal, five polls (two minutes at least) is a source that is stuck.
    patience_s = max(120.0, 5 * s.ingest_poll_s)
    ctx.health.checks["source"] = lambda: source.readiness(patience_s)
    failing = FailingPolls()
    ctx.health.checks["polls"] = lambda: failing.readiness(patience_s)
    if live is not None:
        # The universe in force, when it last changed, where the rules come from, held pairs delisted.
        ctx.health.checks["universe"] = lambda: (True, live.universe_detail())
    ctx.health.set("last_cycle_unix", 0)
    interval = s.replay_interval_s if s.ingest_source == "replay" else s.ingest_poll_s
    last_cycle_at = -interval

    async def poll() -> None:
        nonlocal aborted_stale
        step = await source.next_step()
        if step is None:
            return
        if step.snapshot is None and step.cycle_id == aborted_stale:
            return
        done = ended.setdefault(step.cycle_id, asyncio.Event())
        attempt = attempts[step.cycle_id] = attempts.get(step.cycle_id, 0) + 1
        published_at = time.monotonic()
        await _publish_step(ctx, step, store, attempt)
        try:
            await asyncio.wait_for(done.wait(), timeout=s.cycle_timeout_s)
            if step.snapshot is not None:  # a whole cycle: data announced -> the executor's journal closed it
                ctx.health.observe("cycle_seconds", time.monotonic() - published_at)
            if source.done(step):
                await kv.put(cursor_key, str(step.as_of_ms).encode())
                aborted_stale = None
            else:
                # Sync mode: the bar's data may still arrive, so the cursor stays and the next poll retries it;
                # a later complete publish of this cycle id is fine (the executor refuses only a cycle that
                # already has an executed plan, and an aborted one has none).
                aborted_stale = step.cycle_id
                info(ctx.logger, "DATA_STALE", "stale bar kept; asking for it again at the next poll",
                     cycle_id=step.cycle_id, poll_s=interval)
            attempts.pop(step.cycle_id, None)
            ctx.health.inc("cycles_completed")
            ctx.health.set("last_cycle_unix", time.time())
        except TimeoutError:
            # The cycle did not end in the journal: publish the same snapshot again rather than skip a bar.
            # The message id carries the attempt so the stream's duplicate window does not swallow the retry;
            # downstream ids (target, plan, clientOrderId) are content hashes, so a second copy is harmless.
            warn(ctx.logger, "CYCLE_TIMEOUT", "cycle did not end in the journal in time; retrying it",
                 cycle_id=step.cycle_id, timeout_s=s.cycle_timeout_s)
            ctx.health.inc("cycle_timeouts")
        ended.pop(step.cycle_id, None)

    while not ctx.stop.is_set():
        wait = interval - (time.monotonic() - last_cycle_at)
        if wait > 0:
            try:
                await asyncio.wait_for(ctx.stop.wait(), timeout=wait)
                break
            except TimeoutError:
                pass
        last_cycle_at = time.monotonic()
        if source.exhausted:
            info(ctx.logger, "REPLAY", "end of bundled history reached; idle until stopped")
            await ctx.stop.wait()
            break
        try:
            await poll()
        except Exception as exc:
            # A bus timeout, a full disk, a provider bug: this poll is lost, not the process.  The cursor has not
            # moved past an unpublished bar, so the next poll asks for the same bar again; readiness turns red if
            # the failures outlast the patience, and the tagged line says what broke.
            failing.note(exc)
            fields = {"error": f"{type(exc).__name__}: {exc}"[:400], "retry_in_s": interval}
            ctx.logger.error("poll failed; retrying at the next poll", exc_info=True,
                             extra={"tag": "INGEST_ERROR", "fields": fields})
            ctx.health.inc("poll_errors")
        else:
            failing.clear()


class FailingPolls:
    """Polls that raised in a row: red on /readyz once they have failed for longer than the patience."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.why = ""

    def note(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.why = f"{type(exc).__name__}: {exc}"[:200]

    def clear(self) -> None:
        self.since, self.why = None, ""

    def readiness(self, patience_s: float) -> tuple[bool, str]:
        if self.since is None:
            return True, "ok"
        failed_for = time.monotonic() - self.since
        return failed_for <= patience_s, f"polls failing for {failed_for:.0f}s: {self.why}"


def held_pairs(snap: PortfolioSnapshot, dust_usdt: float) -> set[str]:
    """The pairs a snapshot holds more than dust of, at their entry price: counted, dust kept every pair ever
    traded in the universe past its bound (found by an audit)."""
    return snap.held_beyond_dust(snap.entry_prices, dust_usdt)


def _held_of(raw: bytes | None) -> set[str]:
    try:
        value = json.loads(raw) if raw is not None else []
    except ValueError:
        return set()
    return {str(sym) for sym in value} if isinstance(value, list) else set()


async def _publish_step(ctx: ServiceContext, step: ReplayStep, store: ObjectStore, attempt: int = 1) -> None:
    s = ctx.settings
    panel = step.snapshot
    blob = encode_panel(panel) if panel is not None else b""
    if panel is not None and len(blob) > CANDLE_OBJECT_MAX_BYTES:
        # Signal and risk read no candle object larger than this (shared/objects.py): announced, it would be
        # refused by both, cycle after cycle.  Said here, with what to change, and the cycle ends as stale.
        step = replace(step, snapshot=None, reason=f"candle panel of {len(blob):,} bytes ({len(panel.symbols)} "
                       f"symbols x {len(panel.timestamps)} bars) is over the {CANDLE_OBJECT_MAX_BYTES:,} a reader "
                       "accepts: lower AURA_SNAPSHOT_BARS or the number of symbols")
    if step.snapshot is None:
        reason = step.reason or "incomplete snapshot"
        stale = DataStale(cycle_id=step.cycle_id, timeframe=s.timeframe, reason=reason,
                          missing=list(step.missing), as_of_ms=step.as_of_ms)
        await publish(ctx.js, stale, msg_id=f"stale-{step.cycle_id}-a{attempt}")
        await publish(ctx.js, CycleAborted(cycle_id=step.cycle_id, stage="ingest",
                                           reason=f"stale data: {step.reason}" if step.reason
                                           else f"stale data: missing {','.join(step.missing)}"),
                      msg_id=f"abort-ingest-{step.cycle_id}-a{attempt}")
        warn(ctx.logger, "DATA_STALE", f"{reason}; cycle aborted", cycle_id=step.cycle_id,
             missing=list(step.missing))
        ctx.health.inc("stale_snapshots")
        return
    content = digest(blob)
    await store.put(content, blob)
    rules = step.rules or {}
    symbols = set(step.snapshot.symbols)
    # The rules travel with the data they were read for: risk rounds with them and checks targets against them.
    markets = [MarketRuleMsg(r.symbol, r.step_size, r.tick_size, r.min_qty, r.min_notional)
               for sym, r in sorted(rules.items()) if sym in symbols]
    unruled = sorted(symbols - set(rules))
    if unruled:  # never expected (sync: universe and rules come from one read); risk will not trade these
        warn(ctx.logger, "MARKETS_STALE", "snapshot symbols without market rules: they cannot be traded this cycle",
             cycle_id=step.cycle_id, symbols=unruled)
    ready = DataReady(cycle_id=step.cycle_id, timeframe=s.timeframe, as_of_ms=step.as_of_ms, digest=content,
                      symbols=list(step.snapshot.symbols), bars=len(step.snapshot.timestamps),
                      markets=markets, emitted_at_ms=int(time.time() * 1000))
    await publish(ctx.js, ready, msg_id=f"ready-{step.cycle_id}-{content[:16]}-a{attempt}")
    ctx.health.inc("data_ready_published")
    info(ctx.logger, "DATA_READY", "snapshot published", cycle_id=step.cycle_id, digest=content[:16],
         symbols=len(symbols))
