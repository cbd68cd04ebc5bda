"""Signal service shell: candles from the object store -> compute_targets -> TargetPortfolio.

State between cycles (regime hysteresis) lives in the state KV bucket keyed with the cycle it was made for,
so a redelivered "data ready" recomputes from the same input state and yields the same target.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import numpy as np
from nats.js.errors import NotFoundError

from aura.strategy.params import StrategyParams, history_bars, params_digest
from aura.strategy.schedule import is_decision_bar, timeframe_ms
from aura.strategy.signal import compute_targets
from aura.strategy.state import SignalState
from aura.strategy.types import Panel
from shared.bus import durable_pull, kv_get, publish, state_kv
from shared.candles import decode_panel
from shared.consumer import RedeliveryAlarm, Reject, handle, pull_loop
from shared.contracts import CONSUMERS, CycleAborted, DataReady, TargetPortfolio, content_id
from shared.credentials import PARAMS_SIGNERS, trusted_keys
from shared.logging import error, info
from shared.objects import ObjectTooLarge, verified_candles
from shared.params_tracker import ParamsTracker
from shared.service import ServiceContext, warm_decision_kernels
from shared.state_keys import SIGNAL_STATE_KEY as STATE_KEY


def check_panel(panel: Panel, ready: DataReady) -> None:
    """Refuse a snapshot that does not match its announcement or carries impossible prices."""
    if list(panel.symbols) != ready.symbols:
        raise Reject("bad_data", f"snapshot symbols {panel.symbols} != announced {ready.symbols}")
    if len(panel.timestamps) == 0 or int(panel.timestamps[-1]) != ready.as_of_ms:
        raise Reject("bad_data", f"snapshot does not end at as_of {ready.as_of_ms}")
    if np.any(np.diff(panel.timestamps) <= 0):
        raise Reject("bad_data", "snapshot timestamps are not strictly increasing")
    last = panel.close[-1]
    if np.any(~np.isfinite(last)) or np.any(last <= 0):
        bad = [s for s, p in zip(panel.symbols, last, strict=True) if not (np.isfinite(p) and p > 0)]
        raise Reject("bad_data", f"non-positive or NaN last close for {bad}")
    finite = panel.close[np.isfinite(panel.close)]
    if np.any(finite <= 0):
        raise Reject("bad_data", "snapshot holds non-positive closes")


def short_window(bars: int, params: StrategyParams, version: int) -> str:
    """Why a snapshot of ``bars`` bars is too short for ``params`` ("" when it suffices).  The snapshot's own
    length, not this process's setting: ingest cuts the window (every snapshot it publishes is its full
    AURA_SNAPSHOT_BARS, the replay starting where that much history exists), and the two processes may be
    configured apart."""
    needed = history_bars(params)
    if bars >= needed:
        return ""
    return (f"parameters version {version} read {needed} bars of history and this snapshot holds {bars}: set "
            f"ingest's AURA_SNAPSHOT_BARS >= {needed}, or promote parameters with shorter lookbacks")


def make_target(ready: DataReady, panel: Panel, params: StrategyParams, params_version: int,
                state_in: SignalState | None) -> tuple[TargetPortfolio, SignalState]:
    """Pure: the target the signal stage publishes for ``ready`` (``emitted_at_ms`` left at 0)."""
    targets, state_out = compute_targets(panel, params, state_in)
    prices = {s: float(p) for s, p in zip(panel.symbols, panel.close[-1], strict=True)}
    body: dict[str, Any] = {"cycle_id": ready.cycle_id, "as_of_ms": ready.as_of_ms, "data_digest": ready.digest,
                            "params_version": params_version, "params_digest": params_digest(params),
                            "regime": targets.regime, "weights": targets.weights, "prices": prices,
                            "markets": ready.markets, "expected_returns": targets.expected_returns,
                            "signal_state": state_out.to_dict()}
    return TargetPortfolio(target_id=content_id(body, prefix="t-"), **body), state_out


async def run(ctx: ServiceContext) -> None:
    if not await warm_decision_kernels(ctx):
        return
    kv = await state_kv(ctx.js)
    # The timeframe: a document made for other bars is refused, never run with its lookbacks miscounted.
    tracker = ParamsTracker(ctx.js, trusted_keys(ctx.settings.keys, "signal", PARAMS_SIGNERS), ctx.health, ctx.logger,
                            max_loss_bound=ctx.settings.max_loss_bound, timeframe=ctx.settings.timeframe)
    await tracker.current()
    follower = asyncio.create_task(tracker.follow(ctx.stop))
    sub = await durable_pull(ctx.js, CONSUMERS["signal"])
    alarm = RedeliveryAlarm(ctx.health, "signal")

    async def on_ready(ready: DataReady) -> None:
        try:
            data = await verified_candles(ctx.js, ready.digest)
        except NotFoundError as exc:
            raise Reject("missing_candles", f"object {ready.digest[:16]} not in candle store: {exc}") from exc
        except ObjectTooLarge as exc:
            raise Reject("oversized_candles", str(exc)) from exc
        # Any other failure (a timeout right after a reconnect) propagates: the consumer redelivers it.
        if data is None:
            raise Reject("digest_mismatch", f"candle object does not hash to {ready.digest[:16]}")
        panel = decode_panel(data)
        check_panel(panel, ready)
        params, version = await tracker.current()
        if short := short_window(len(panel.timestamps), params, version):
            # Trading on it would decide otherwise than the backtest that validated the parameters (on 1h the
            # defaults held nothing at all): the cycle ends aborted, loudly, until the window or the version changes.
            ctx.health.checks["window"] = lambda why=short: (False, why)
            error(ctx.logger, "WINDOW", "data window shorter than the parameters need; not trading this cycle",
                  cycle_id=ready.cycle_id, reason=short)
            await publish(ctx.js, CycleAborted(cycle_id=ready.cycle_id, stage="signal", reason=short),
                          msg_id=f"abort-signal-{ready.cycle_id}")
            return
        fits = f"snapshot of {len(panel.timestamps)} bars, {history_bars(params)} read"
        ctx.health.checks["window"] = lambda: (True, fits)
        if not is_decision_bar(ready.as_of_ms, timeframe_ms(ready.timeframe), params.rebalance_every):
            # Same schedule as the backtester: between decision bars only the risk tick acts.
            await publish(ctx.js, CycleAborted(cycle_id=ready.cycle_id, stage="signal",
                                               reason=f"not a decision bar (rebalance_every={params.rebalance_every})"),
                          msg_id=f"abort-signal-{ready.cycle_id}")
            return
        state_in = await _state_for(kv, ready.cycle_id)
        target, state_out = make_target(ready, panel, params, version, state_in)
        await kv.put(STATE_KEY, msgspec.json.encode({"cycle_id": ready.cycle_id, "before": _dict(state_in),
                                                      "after": state_out.to_dict()}))
        target = msgspec.structs.replace(target, emitted_at_ms=int(time.time() * 1000))
        await publish(ctx.js, target, msg_id=target.target_id)
        ctx.health.inc("targets_published")
        ctx.health.set("params_version", version)
        info(ctx.logger, "TARGETS", "target portfolio published", cycle_id=ready.cycle_id, regime=target.regime,
             weights=target.weights, params_version=version)

    async def on_msg(msg: Any) -> None:
        await handle(ctx, msg, DataReady, on_ready)

    try:
        await pull_loop(sub, on_msg, ctx.stop, ctx.logger, alarm)
    finally:
        follower.cancel()


def _dict(state: SignalState | None) -> dict[str, Any] | None:
    return state.to_dict() if state is not None else None


async def _state_for(kv: Any, cycle_id: str) -> SignalState | None:
    """The state to feed cycle ``cycle_id``: the stored input if this cycle is being redone, else the output."""
    raw, _ = await kv_get(kv, STATE_KEY)
    if raw is None:
        return None
    doc = msgspec.json.decode(raw)
    chosen = doc.get("before") if doc.get("cycle_id") == cycle_id else doc.get("after")
    return SignalState.from_dict(chosen) if chosen else None
