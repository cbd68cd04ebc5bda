"""The risk tick end to end on a real nats-server: the risk service and the executor (paper) run their real
``run(ctx)`` bodies; prices come from the newest DataReady snapshot in the candle object store.

When the tick triggers it must publish a signed exit plan through the same path as a cycle plan (basis = the
latest snapshot), which the executor verifies and executes; the kill-switch latch must hold until
``aura risk reset`` clears it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from aura.natsd import free_port
from aura.strategy.types import Panel
from services.executor import service as executor_service
from services.ingest.replay import load_market_rules
from services.risk import service as risk_service
from services.risk.cli import HALT_KEY
from services.risk.cli import main as risk_cli
from shared.bus import candle_store, connect, ensure_streams, kv_get, last_message, publish, state_kv
from shared.candles import digest, encode_panel
from shared.config import SERVICE_NAMES, Settings, load_settings
from shared.contracts import (
    ApprovedPlan,
    DataReady,
    DataStale,
    DeadLetter,
    MarketRuleMsg,
    PlanBody,
    PlanLeg,
    PortfolioSnapshot,
    TargetPortfolio,
    content_id,
    decode,
    plan_id_for,
)
from shared.health import HealthState
from shared.service import ServiceContext
from shared.signing import generate_keypair, load_private_key, load_public_key, sign_plan, verify_plan
from tests.bus_helpers import snapshot, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, tag: str) -> list[dict[str, Any]]:
        return [{"msg": r.getMessage(), **(getattr(r, "fields", None) or {})} for r in self.records
                if getattr(r, "tag", None) == tag]


def settings_for(home: Path, url: str) -> Settings:
    env = {"AURA_HOME": str(home), "AURA_NATS_URL": url, "AURA_RISK_TICK_S": "0.2", "AURA_LOG_LEVEL": "DEBUG"}
    env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
    return load_settings(env)


@asynccontextmanager
async def system(settings: Settings, capture: Capture) -> AsyncIterator[Any]:
    """Executor and risk bodies as tasks, each with its own NATS connection, like two processes."""
    generate_keypair(settings.private_key_path, settings.public_key_path)
    contexts, tasks = [], []
    for name, body in (("executor", executor_service.run), ("risk", risk_service.run)):
        logger = logging.getLogger(f"aura.test.{name}")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
        nc = await connect(settings.nats_url, name, logger)
        js = nc.jetstream()
        await ensure_streams(js, settings.dedup_window_s)
        ctx = ServiceContext(name, settings, logger, nc, js, HealthState(service=name), asyncio.Event())
        contexts.append(ctx)
        tasks.append(asyncio.create_task(body(ctx)))
        if name == "executor":  # the genesis snapshot first, as compose orders them
            await until(lambda js=js: last_message(js, PortfolioSnapshot.SUBJECT), "the genesis snapshot")
    try:
        yield contexts[0].js
    finally:
        for ctx in contexts:
            ctx.stop.set()
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=15)
            except Exception:
                task.cancel()
        for ctx in contexts:
            await ctx.nc.close()
            ctx.logger.removeHandler(capture)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"a service body failed: {task.exception()!r}")


async def buy(js: Any, settings: Settings, qty: float, price: float) -> PortfolioSnapshot:
    """A cycle plan (signed with the risk key, as the risk service would) that buys BTC."""
    basis = await snapshot(js)
    fields: dict[str, Any] = {
        "cycle_id": "1d-20240101T0000", "as_of_ms": T0, "data_digest": "d", "target_id": "t", "params_version": 0,
        "params_digest": "p", "basis_snapshot_id": basis.snapshot_id, "gate": "pass", "halted": False,
        "legs": [PlanLeg(0, "BTC/USDT", "buy", qty, price, "enter")], "reasons": [], "prices": {"BTC/USDT": price}}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(js, sign_plan(body, load_private_key(settings.private_key_path)), msg_id=body.plan_id)

    async def bought() -> PortfolioSnapshot | None:
        snap = await snapshot(js)
        return snap if snap.plan_id == body.plan_id else None

    return await until(bought, "the buy to be executed")


async def market_moves(js: Any, settings: Settings, btc_close: float) -> str:
    """A DataReady whose newest bar closes BTC at ``btc_close`` (ETH flat), stored like ingest stores it."""
    rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
    symbols = ("BTC/USDT", "ETH/USDT")
    closes = np.array([[40_000.0, 2000.0], [btc_close, 2000.0]])
    panel = Panel(symbols, np.array([T0, T0 + DAY], dtype=np.int64), closes, closes, closes, closes,
                  np.ones_like(closes))
    blob = encode_panel(panel)
    content = digest(blob)
    await (await candle_store(js)).put(content, blob)
    markets = [MarketRuleMsg(s, rules[s].step_size, rules[s].tick_size, rules[s].min_qty, rules[s].min_notional)
               for s in symbols]
    await publish(js, DataReady(cycle_id="1d-20240102T0000", timeframe="1d", as_of_ms=T0 + DAY, digest=content,
                                symbols=list(symbols), bars=2, markets=markets), msg_id=f"ready-{content[:16]}")
    return content


def journal(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{settings.journal_path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_stop_loss_tick_emits_a_signed_exit_plan_the_executor_verifies_and_executes(
        nats_server: NatsEndpoint, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home", nats_server.url)
    capture = Capture()

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot, ApprovedPlan]:
        async with system(settings, capture) as js:
            holding = await buy(js, settings, 0.1, 40_000.0)
            content = await market_moves(js, settings, 33_000.0)  # -17.5%: below the 15% stop

            async def exited() -> PortfolioSnapshot | None:
                snap = await snapshot(js)
                return snap if snap.cycle_id.startswith("tick-") else None

            after = await until(exited, "the stop-loss exit")
            seen = len(capture.records)

            async def quiet_tick() -> bool:  # the next tick sees the exit: nothing held, nothing to do
                return any(getattr(r, "tag", "") == "RISK_TICK" and r.getMessage() == "tick: none"
                           for r in capture.records[seen:])

            await until(quiet_tick, "a quiet tick after the exit")
            raw = await last_message(js, ApprovedPlan.SUBJECT)
            assert raw is not None
            approved = decode(raw, ApprovedPlan)
            assert approved.plan.data_digest == content
            return holding, after, approved

    holding, after, approved = asyncio.run(scenario())
    plan = approved.plan
    verify_plan(approved, load_public_key(settings.public_key_path))  # signed with the risk key, like any plan
    assert plan.basis_snapshot_id == holding.snapshot_id and plan.cycle_id == after.cycle_id
    assert [(x.side, x.symbol, x.qty, x.reason) for x in plan.legs] == [("sell", "BTC/USDT", 0.1, "stop_loss")]
    assert after.holdings == {} and after.status == "executed" and after.plan_id == plan.plan_id
    assert journal(settings, f"SELECT status, gate FROM plans WHERE plan_id='{plan.plan_id}'") == [("executed",
                                                                                                    "pass")]
    ticks = capture.fields("RISK_TICK")
    assert any(t.get("action") == "exit" for t in ticks) and any("exit plan signed" in t["msg"] for t in ticks)
    stops = [c for c in capture.fields("SL_CHECK") if c.get("verdict") == "stop_loss"]
    assert stops and stops[0]["symbol"] == "BTC/USDT" and stops[0]["price"] == 33_000.0
    assert stops[0]["stop_level"] == pytest.approx(holding.entry_prices["BTC/USDT"] * 0.85)
    # Every tick logs, the quiet ones too; the exit plan was published once.
    assert sum(1 for t in ticks if t["msg"].startswith("tick:")) >= 2
    assert sum(1 for t in ticks if "exit plan signed" in t["msg"]) == 1


def test_kill_switch_on_a_tick_latches_until_aura_risk_reset(nats_server: NatsEndpoint, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path / "home", nats_server.url)
    capture = Capture()
    monkeypatch.setenv("AURA_NATS_URL", nats_server.url)

    async def latch(js: Any) -> dict[str, Any]:
        raw, _ = await kv_get(await state_kv(js), HALT_KEY)
        return msgspec.json.decode(raw) if raw else {}

    def tick_lines() -> int:
        return sum(1 for t in capture.fields("RISK_TICK") if t["msg"].startswith("tick:"))

    async def scenario() -> tuple[dict[str, Any], PortfolioSnapshot, dict[str, Any], dict[str, Any]]:
        async with system(settings, capture) as js:
            await buy(js, settings, 0.2, 40_000.0)  # 80% of the book in BTC
            await market_moves(js, settings, 25_000.0)  # equity 10k -> ~7k: a 30% drawdown

            async def liquidated() -> PortfolioSnapshot | None:
                snap = await snapshot(js)
                return snap if snap.cycle_id.startswith("tick-") else None

            after = await until(liquidated, "the kill-switch liquidation")
            latched = await latch(js)
            code = await asyncio.to_thread(risk_cli, ["reset", "--reason", "test"])
            assert code == 0
            cleared = await latch(js)
            # The reset must stick: the book is in cash ~30% under a peak still inside the rolling window,
            # and ticks after the reset must measure drawdown from the reset on, not latch again at once.
            seen = tick_lines()

            async def ticked_since_reset() -> bool:
                return tick_lines() >= seen + 5

            await until(ticked_since_reset, "five risk ticks after the reset")
            return latched, after, cleared, await latch(js)

    latched, after, cleared, later = asyncio.run(scenario())
    assert latched["halted"] is True and latched["drawdown"] >= 0.25
    assert after.holdings == {}
    gate = journal(settings, f"SELECT gate FROM plans WHERE plan_id='{after.plan_id}'")
    assert gate == [("kill_switch",)]
    assert cleared["halted"] is False and cleared["was"]["halted"] is True and cleared["reason"] == "test"
    assert later == cleared, f"the kill-switch latched again after the operator reset: {later}"
    assert len(capture.fields("KILL_SWITCH")) == 1


def test_live_tick_reads_public_tickers_without_keys(nats_server: NatsEndpoint, tmp_path: Path,
                                                     shared_data_dir: Path) -> None:
    """Live mode: prices from the exchange's public ticker endpoint (here the simulator), never with keys."""
    from aura.exchange_sim import SimConfig, SimServer

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    capture = Capture()
    with SimServer(config=config) as sim:
        price = float(sim.sim.price("BTCUSDT"))
        env = {"AURA_HOME": str(tmp_path / "home"), "AURA_NATS_URL": nats_server.url, "AURA_RISK_TICK_S": "0.2",
               "AURA_DRY_RUN": "false", "AURA_EXCHANGE_API_URL": sim.base_url}
        env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
        settings = load_settings(env)
        generate_keypair(settings.private_key_path, settings.public_key_path)

        async def scenario() -> ApprovedPlan:
            logger = logging.getLogger("aura.test.risk.live")
            logger.setLevel(logging.DEBUG)
            logger.addHandler(capture)
            nc = await connect(settings.nats_url, "risk", logger)
            js = nc.jetstream()
            await ensure_streams(js, settings.dedup_window_s)
            # The executor's snapshot: 0.1 BTC bought 25% above today's price, so the stop-loss is hit.
            basis = PortfolioSnapshot(snapshot_id="s-live", cycle_id="1d-20240101T0000", plan_id="p-0",
                                      status="executed", cash=5000.0, holdings={"BTC/USDT": 0.1},
                                      entry_prices={"BTC/USDT": price * 1.25}, equity=5000.0 + 0.1 * price,
                                      equity_history=[5000.0 + 0.1 * price])
            await publish(js, basis, msg_id=basis.snapshot_id)
            ctx = ServiceContext("risk", settings, logger, nc, js, HealthState(service="risk"), asyncio.Event())
            task = asyncio.create_task(risk_service.run(ctx))
            try:
                raw = await until(lambda: last_message(js, ApprovedPlan.SUBJECT), "the live stop-loss plan")
            finally:
                ctx.stop.set()
                await asyncio.wait_for(task, timeout=15)
                await nc.close()
                logger.removeHandler(capture)
            return decode(raw, ApprovedPlan)

        approved = asyncio.run(scenario())
        requests = sim.sim.faults.counts()
    verify_plan(approved, load_public_key(settings.public_key_path))
    plan = approved.plan
    assert plan.basis_snapshot_id == "s-live" and plan.prices["BTC/USDT"] == price
    assert [(x.side, x.symbol, x.qty, x.reason) for x in plan.legs] == [("sell", "BTC/USDT", 0.1, "stop_loss")]
    assert any(path.startswith("GET /api/v3/ticker") for path in requests)
    signed = {"GET /api/v3/account", "POST /api/v3/order", "GET /api/v3/order", "GET /api/v3/myTrades"}
    assert not signed & set(requests), f"the risk service called a private endpoint: {requests}"


def test_a_target_on_data_older_than_a_stale_notice_is_not_traded(nats_server: NatsEndpoint,
                                                                   tmp_path: Path) -> None:
    """Ingest declared bar T0+2d incomplete; a target computed on T0+1d (signal lagging) is superseded: risk
    refuses it (dead letter stale_data, the cycle aborted and journaled). A target on the stale bar itself,
    once ingest completes it on a later poll, is approved as usual."""
    settings = settings_for(tmp_path / "home", nats_server.url)
    capture = Capture()

    def target(day: int) -> TargetPortfolio:
        fields: dict[str, Any] = {
            "cycle_id": f"1d-2024010{1 + day}T0000", "as_of_ms": T0 + day * DAY, "data_digest": "d",
            "params_version": 0, "params_digest": "p", "regime": "bear", "weights": {},
            "prices": {"BTC/USDT": 40_000.0}, "markets": []}
        return TargetPortfolio(target_id=content_id(fields, prefix="t-"), **fields)

    async def cycle_snapshot(js: Any, cycle_id: str) -> PortfolioSnapshot | None:
        snap = await snapshot(js)
        return snap if snap.cycle_id == cycle_id else None

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot, list[bytes]]:
        async with system(settings, capture) as js:
            await publish(js, DataStale(cycle_id="1d-20240103T0000", timeframe="1d", reason="incomplete snapshot",
                                        missing=["ETH/USDT"], as_of_ms=T0 + 2 * DAY), msg_id="stale-20240103")

            async def noticed() -> bool:
                return bool(capture.fields("DATA_STALE"))

            await until(noticed, "risk to log the stale notice")
            late, same_bar = target(1), target(2)
            await publish(js, late, msg_id=late.target_id)
            refused = await until(lambda: cycle_snapshot(js, late.cycle_id), "the late target's cycle to end")
            await publish(js, same_bar, msg_id=same_bar.target_id)
            approved = await until(lambda: cycle_snapshot(js, same_bar.cycle_id), "the completed bar's cycle")
            sub = await js.subscribe("aura.dlq.risk", ordered_consumer=True)
            letters = [(await sub.next_msg(timeout=5)).data]
            return refused, approved, letters

    refused, approved, letters = asyncio.run(scenario())
    assert refused.status == "aborted" and refused.plan_id == ""
    assert approved.status == "executed" and approved.plan_id != ""
    letter = decode(letters[0], DeadLetter)
    assert letter.reason == "stale_data" and "1d-20240103T0000" in letter.error
    assert decode(letter.payload, TargetPortfolio).cycle_id == "1d-20240102T0000"
    events = journal(settings, "SELECT detail FROM events WHERE kind='cycle_aborted' AND cycle_id='1d-20240102T0000'")
    assert len(events) == 1 and "data stale since 1d-20240103T0000" in events[0][0]
