"""Helpers the tests that run service bodies on a real nats-server share: wait for a condition, read the
executor's newest snapshot, read dead letters (as the operator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from services.executor import service as executor_service
from services.ingest.replay import load_history, load_market_rules, replay_step
from services.risk import service as risk_service
from services.signal import service as signal_service
from services.signal.service import make_target
from shared.bus import close, connect, last_message, publish, stored_messages
from shared.candles import digest, encode_panel
from shared.contracts import (
    ApprovedPlan,
    DataReady,
    DeadLetter,
    MarketRuleMsg,
    PlanBody,
    PlanLeg,
    PortfolioSnapshot,
    TargetPortfolio,
    content_id,
    decode,
    plan_id_for,
    stream_of,
)
from shared.credentials import signing_key
from shared.cycles import as_of_of_cycle
from shared.health import HealthState
from shared.objects import candle_writer
from shared.service import ServiceContext
from shared.signing import sign_plan, sign_struct


class Capture(logging.Handler):
    """Every log record of the service bodies a test runs, to assert on the permanent tags and their fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, tag: str) -> list[dict[str, Any]]:
        return [{"msg": r.getMessage(), **(getattr(r, "fields", None) or {})} for r in self.records
                if getattr(r, "tag", None) == tag]


async def until(probe: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    """Poll the async ``probe`` until it returns something truthy (returned), or fail naming ``what``.  A probe
    whose bus request timed out counts as "not yet": the service bodies share this event loop, so a journal
    fsync that stalls on a loaded CI disk can starve one request's reply past its own timeout; the deadline
    here still bounds the wait."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            value = await probe()
        except nats.errors.TimeoutError:
            value = None
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def snapshot(js: Any) -> PortfolioSnapshot:
    """The newest portfolio snapshot the executor published (a timed-out read is asked again, as in ``until``)."""

    async def newest() -> tuple[bytes | None] | None:
        return (await last_message(js, PortfolioSnapshot.SUBJECT),)

    raw, = await until(newest, "a portfolio snapshot read to be answered")
    assert raw is not None, "no portfolio snapshot published yet"
    return decode(raw, PortfolioSnapshot)


# --- playing one principal at a time on a secured bus: ingest, signal, executor, risk, the operator --------------

REPLAY_DIR_NAME = ("data", "replay")  # the bundled replay candles, relative to the repository root


@contextlib.asynccontextmanager
async def role_connections(settings: Any, *principals: str) -> AsyncIterator[dict[str, Any]]:
    """One NATS connection per principal, each holding only that principal's credential (so only its rights);
    yields principal -> JetStream context.  ``settings`` names the bus and the AURA_HOME whose keys to use."""
    conns = {}
    try:
        for principal in principals:
            conns[principal] = await connect(settings, principal, logging.getLogger(f"aura.test.as.{principal}"),
                                             connect_timeout_s=10)
        yield {principal: nc.jetstream() for principal, nc in conns.items()}
    finally:
        for nc in conns.values():
            await close(nc)


@contextlib.asynccontextmanager
async def running(settings: Any, *names: str, handler: logging.Handler | None = None, await_genesis: bool = True,
                  ) -> AsyncIterator[dict[str, ServiceContext]]:
    """Service bodies (``run(ctx)`` of executor, risk, signal) as tasks, each on its own connection with its own
    credential, like separate processes, in the order given; the executor's genesis snapshot is awaited before
    the next one starts (unless ``await_genesis`` is False), as compose orders them.  On exit every body is
    stopped; one that failed fails the test."""
    bodies = {"executor": executor_service.run, "risk": risk_service.run, "signal": signal_service.run}
    contexts: dict[str, ServiceContext] = {}
    tasks = []
    try:
        async with role_connections(settings, "operator") as op:
            for name in names:
                logger = logging.getLogger(f"aura.test.{name}")
                logger.setLevel(logging.DEBUG)
                if handler is not None:
                    logger.addHandler(handler)
                nc = await connect(settings, name, logger, connect_timeout_s=10)
                ctx = ServiceContext(name, settings, logger, nc, nc.jetstream(), HealthState(service=name),
                                     asyncio.Event())
                contexts[name] = ctx
                tasks.append(asyncio.create_task(bodies[name](ctx)))
                if name == "executor" and await_genesis:
                    await until(lambda: last_message(op["operator"], PortfolioSnapshot.SUBJECT), "the genesis snapshot",
                                60)
        yield contexts
    finally:
        for ctx in contexts.values():
            ctx.stop.set()
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=20)
            except Exception:
                task.cancel()
        for ctx in contexts.values():
            await close(ctx.nc)
            if handler is not None:
                ctx.logger.removeHandler(handler)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError(f"a service body failed: {task.exception()!r}")


def market_msgs(symbols: Any, rules: dict[str, Any]) -> list[Any]:
    """The market rules (MarketRuleMsg) ingest announces for ``symbols``, in that order."""

    return [MarketRuleMsg(s, rules[s].step_size, rules[s].tick_size, rules[s].min_qty, rules[s].min_notional)
            for s in symbols]


async def announce_panel(js_ingest: Any, panel: Any, cycle_id: str, markets: list[Any], timeframe: str = "1d") -> Any:
    """Play ingest (on its connection): store ``panel`` as a candle object under its digest, then announce it
    with a DataReady (returned)."""

    blob = encode_panel(panel)
    content = digest(blob)
    await (await candle_writer(js_ingest)).put(content, blob)
    ready = DataReady(cycle_id=cycle_id, timeframe=timeframe, as_of_ms=int(panel.timestamps[-1]), digest=content,
                      symbols=list(panel.symbols), bars=len(panel.timestamps), markets=list(markets))
    await publish(js_ingest, ready, msg_id=f"ready-{cycle_id}-{content[:16]}")
    return ready


def executor_signed(settings: Any, snap: PortfolioSnapshot) -> PortfolioSnapshot:
    """``snap`` signed with the executor's key, as the executor publishes every snapshot."""

    return sign_struct(snap, signing_key(settings.keys, "executor"))


def reforged_target(target: Any, **changes: Any) -> Any:
    """``target`` (a TargetPortfolio) with ``changes`` and a target id recomputed the way the signal stage
    makes it: what a compromised signal service publishes, a well-formed target that lies."""


    body = msgspec.structs.asdict(msgspec.structs.replace(target, **changes))
    for name in ("target_id", "emitted_at_ms", "v"):
        body.pop(name)
    return TargetPortfolio(target_id=content_id(body, prefix="t-"), **body)


async def stream_messages(js_operator: Any, subject: str) -> list[bytes]:
    """Every message still stored on ``subject`` (no wildcards), oldest first, read with direct gets by sequence:
    deterministic, no consumer, no idle wait (the operator may direct-get from any stream)."""


    return [msg.data or b"" for msg in await stored_messages(js_operator, stream_of(subject), subject,
                                                            limit=1_000_000)]


async def dead_letters(js_operator: Any, service: str) -> list[DeadLetter]:
    """Every dead letter ``service`` has stored so far, oldest first (direct gets: cheap enough to poll)."""
    return [decode(raw, DeadLetter) for raw in await stream_messages(js_operator, f"{DeadLetter.SUBJECT}.{service}")]


async def approved_plans(js_operator: Any) -> list[Any]:
    """Every ApprovedPlan still stored, oldest first (as the operator)."""

    return [decode(raw, ApprovedPlan) for raw in await stream_messages(js_operator, ApprovedPlan.SUBJECT)]


def replay_history() -> Any:
    """The bundled replay candles (data/replay), loaded once per test session."""
    cached = _REPLAY_CACHE.get("history")
    if cached is None:


        cached = _REPLAY_CACHE["history"] = load_history(Path(__file__).resolve().parent.parent.joinpath(
            *REPLAY_DIR_NAME), "1d")
    return cached


_REPLAY_CACHE: dict[str, Any] = {}


def replay_snapshot(index: int, snapshot_bars: int = 400) -> tuple[str, Any, list[Any]]:
    """(cycle id, panel, market rules) ingest ships for bar ``index`` of the bundled replay (a complete bar)."""


    step = replay_step(replay_history(), index, snapshot_bars, "1d")
    assert step.snapshot is not None, f"replay bar {index} is incomplete"
    rules = load_market_rules(Path(__file__).resolve().parent.parent.joinpath(*REPLAY_DIR_NAME, "markets.json"))
    return step.cycle_id, step.snapshot, market_msgs(step.snapshot.symbols, rules)


def replay_signal_state(first: int, upto: int, params: Any, snapshot_bars: int = 400) -> Any:
    """The signal stage's state after the replay bars ``first``..``upto`` (inclusive), as the running signal
    service would carry it (pure: ``make_target`` on each bar's snapshot); None if ``upto < first``."""

    state = None
    for index in range(first, upto + 1):
        cycle_id, panel, markets = replay_snapshot(index, snapshot_bars)
        ready = DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=int(panel.timestamps[-1]), digest="",
                          symbols=list(panel.symbols), bars=len(panel.timestamps), markets=markets)
        _, state = make_target(ready, panel, params, 0, state)
    return state


async def publish_buy(js_risk: Any, settings: Any, cycle_id: str, basis_id: str, qty: float = 0.01,
                      price: float = 40_000.0) -> PlanBody:
    """Play risk (its connection, its key): a plan that buys ``qty`` BTC on the basis ``basis_id`` for the bar
    ``cycle_id`` names (shared.cycles.cycle_id_for); it passes every check before execution."""
    as_of_ms = as_of_of_cycle(cycle_id)
    assert as_of_ms is not None, f"{cycle_id!r} names no bar: the executor trades only a bar's plan or a tick's exits"
    fields: dict[str, Any] = {
        "cycle_id": cycle_id, "as_of_ms": as_of_ms, "data_digest": "d", "target_id": f"t-{cycle_id}",
        "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis_id, "gate": "pass",
        "halted": False, "legs": [PlanLeg(0, "BTC/USDT", "buy", qty, price, "enter")], "reasons": [],
        "prices": {"BTC/USDT": price}}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(js_risk, sign_plan(body, signing_key(settings.keys, "risk")), msg_id=body.plan_id)
    return body


def journal_rows(settings: Any, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the executor's journal, opened read-only (as every reader but the executor must)."""
    db = sqlite3.connect(f"file:{settings.journal_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def launch_system(home: Path, **env_extra: str) -> tuple[Any, Any, dict[str, str]]:
    """(stack, bus, env) of a whole system as `aura up` runs it, on its own authenticated nats-server and free
    ports (never the machine's 4222), with this process's AURA_* settings left out and ``env_extra`` added.
    Not yet ready: the caller waits (``aura.launcher.wait_ready``) and stops both."""
    import os

    from aura.launcher import start_stack
    from aura.natsd import free_port, start_bus
    from shared.config import SERVICE_NAMES, load_settings
    from shared.credentials import ensure_credentials

    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env.update({"AURA_HOME": str(home), "AURA_LOG_LEVEL": "INFO", **env_extra})
    env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
    settings = load_settings(env)
    ensure_credentials(settings.keys)
    server = start_bus(settings, free_port())
    env["AURA_NATS_URL"] = server.url
    try:
        return start_stack(load_settings(env), env), server, env
    except BaseException:
        server.stop()
        raise
