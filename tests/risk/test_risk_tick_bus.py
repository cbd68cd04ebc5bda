"""The risk tick end to end on a real, secured nats-server: the risk service and the executor (paper) run their
real ``run(ctx)`` bodies, each on its own connection with its own credential; prices come from the newest
DataReady snapshot in the candle object store.

The test plays the other roles with their own credentials: ingest (candle objects, DataReady, DataStale),
signal (targets), risk (a cycle plan signed with the risk key), the executor (a signed snapshot) and the
operator (reading state and dead letters, ``aura risk reset``).

When the tick triggers it must publish a signed exit plan through the same path as a cycle plan (basis = the
latest snapshot), which the executor verifies and executes; the kill-switch latch must hold until
``aura risk reset`` has risk clear it, or, with a ``kill_switch_cooldown``, until that many bars of data later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aura.strategy.params import StrategyParams
from aura.strategy.types import Panel
from services.ingest.replay import load_market_rules
from services.risk.cli import main as risk_cli
from services.risk.latch import LatchDoc, read_latch
from services.signal.service import make_target
from shared.bus import last_message, publish
from shared.config import Settings
from shared.contracts import (
    ApprovedPlan,
    DataStale,
    DeadLetter,
    PlanBody,
    PlanLeg,
    PortfolioSnapshot,
    decode,
    encode,
    plan_id_for,
)
from shared.credentials import signing_key
from shared.cycles import cycle_id_for
from shared.live_params import promote, sign_document
from shared.signing import load_public_key, sign_plan, verify_plan
from tests.bus_helpers import (
    Capture,
    announce_panel,
    approved_plans,
    dead_letters,
    executor_signed,
    journal_rows,
    market_msgs,
    replay_signal_state,
    replay_snapshot,
    role_connections,
    running,
    snapshot,
    until,
)
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
STALE_BAR = 701  # a complete bar of the bundled replay (mid-2019), the one before it complete too


def tick_settings(nats_server: NatsEndpoint, **extra: str) -> Settings:
    """Settings of the bus's AURA_HOME (its keys), a fast risk tick, debug logs, free health ports, and the code's
    per-order cap set explicitly (live mode refuses to start without one the operator set)."""
    return nats_server.settings(**{"AURA_RISK_TICK_S": "0.2", "AURA_LOG_LEVEL": "DEBUG",
                                   "AURA_MAX_ORDER_USDT": "1000000", **extra})


async def buy(js_risk: Any, settings: Settings, qty: float, price: float) -> PortfolioSnapshot:
    """Play risk (its connection, its key): a cycle plan that buys BTC on the newest snapshot."""
    basis = await snapshot(js_risk)
    fields: dict[str, Any] = {
        "cycle_id": "1d-20240101T0000", "as_of_ms": T0, "data_digest": "d", "target_id": "t", "params_version": 0,
        "params_digest": "p", "basis_snapshot_id": basis.snapshot_id, "gate": "pass", "halted": False,
        "legs": [PlanLeg(0, "BTC/USDT", "buy", qty, price, "enter")], "reasons": [], "prices": {"BTC/USDT": price}}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(js_risk, sign_plan(body, signing_key(settings.keys, "risk")), msg_id=body.plan_id)

    async def bought() -> PortfolioSnapshot | None:
        snap = await snapshot(js_risk)
        return snap if snap.plan_id == body.plan_id else None

    return await until(bought, "the buy to be executed")


async def market_moves(js_ingest: Any, settings: Settings, btc_close: float, day: int = 1,
                       volume: float = 50_000.0) -> str:
    """Play ingest: a DataReady whose newest bar (the bar of 2024-01-01 + ``day`` days, its as_of_ms) closes BTC at
    ``btc_close`` (ETH flat) on ``volume`` coins traded (by default a day's volume, far above these orders' 10%
    cap), its candle object stored first, as ingest does."""
    rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
    symbols = ("BTC/USDT", "ETH/USDT")
    closes = np.array([[40_000.0, 2000.0], [btc_close, 2000.0]])
    panel = Panel(symbols, np.array([T0 + (day - 1) * DAY, T0 + day * DAY], dtype=np.int64), closes, closes, closes,
                  closes, np.full_like(closes, volume))
    ready = await announce_panel(js_ingest, panel, f"1d-202401{day + 1:02d}T0000", market_msgs(symbols, rules))
    return ready.digest


def test_stop_loss_tick_emits_a_signed_exit_plan_the_executor_verifies_and_executes(
        nats_server: NatsEndpoint) -> None:
    settings = tick_settings(nats_server)
    capture = Capture()

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot, ApprovedPlan]:
        async with running(settings, "executor", "risk", handler=capture) as services, \
                role_connections(settings, "ingest", "risk", "operator") as js:
            holding = await buy(js["risk"], settings, 0.1, 40_000.0)
            content = await market_moves(js["ingest"], settings, 33_000.0)  # -17.5%: below the 15% stop

            async def exited() -> PortfolioSnapshot | None:
                snap = await snapshot(js["operator"])
                return snap if snap.cycle_id.startswith("tick-") else None

            after = await until(exited, "the stop-loss exit")
            seen = len(capture.records)

            async def quiet_tick() -> bool:  # the next tick sees the exit: nothing held, nothing to do
                return any(getattr(r, "tag", "") == "RISK_TICK" and r.getMessage() == "tick: none"
                           for r in capture.records[seen:])

            await until(quiet_tick, "a quiet tick after the exit")
            raw = await last_message(js["operator"], ApprovedPlan.SUBJECT)
            assert raw is not None
            approved = decode(raw, ApprovedPlan)
            assert approved.plan.data_digest == content
            registry = services["risk"].health.registry
            # The exit, counted by its own reason; "enter" never (its series is there from the start, at zero).
            for reason, n in (("stop_loss", 1.0), ("enter", 0.0)):
                assert registry.get_sample_value("aura_legs_approved_total", {"service": "risk", "reason": reason}) == n
            return holding, after, approved

    holding, after, approved = asyncio.run(scenario())
    plan = approved.plan
    verify_plan(approved, load_public_key(settings.public_key_path))  # signed with the risk key, like any plan
    assert plan.basis_snapshot_id == holding.snapshot_id and plan.cycle_id == after.cycle_id
    assert [(x.side, x.symbol, x.qty, x.reason) for x in plan.legs] == [("sell", "BTC/USDT", 0.1, "stop_loss")]
    assert after.holdings == {} and after.status == "executed" and after.plan_id == plan.plan_id
    assert journal_rows(settings, f"SELECT status, gate FROM plans WHERE plan_id='{plan.plan_id}'") == [("executed",
                                                                                                    "pass")]
    ticks = capture.fields("RISK_TICK")
    assert any(t.get("action") == "exit" for t in ticks) and any("exit plan signed" in t["msg"] for t in ticks)
    stops = [c for c in capture.fields("SL_CHECK") if c.get("verdict") == "stop_loss"]
    assert stops and stops[0]["symbol"] == "BTC/USDT" and stops[0]["price"] == 33_000.0
    assert stops[0]["stop_level"] == pytest.approx(holding.entry_prices["BTC/USDT"] * 0.85)
    # Every tick logs, the quiet ones too; the exit plan was published once.
    assert sum(1 for t in ticks if t["msg"].startswith("tick:")) >= 2
    assert sum(1 for t in ticks if "exit plan signed" in t["msg"]) == 1


def test_kill_switch_on_a_tick_latches_until_aura_risk_reset(nats_server: NatsEndpoint,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = tick_settings(nats_server)
    capture = Capture()
    # `aura risk reset` finds the bus as an operator would: this AURA_HOME (its keys) and this server.
    monkeypatch.setenv("AURA_HOME", str(nats_server.home))
    monkeypatch.setenv("AURA_NATS_URL", nats_server.url)
    risk_public = load_public_key(settings.public_key_path)

    async def latch(js_operator: Any) -> tuple[LatchDoc, int]:
        """The latch as the operator reads it: verified against risk's public key."""
        doc, revision, problem = await read_latch(js_operator, risk_public)
        assert problem == "", f"the latch does not verify: {problem}"
        return doc, revision

    def tick_lines() -> int:
        return sum(1 for t in capture.fields("RISK_TICK") if t["msg"].startswith("tick:"))

    async def scenario() -> tuple[LatchDoc, PortfolioSnapshot, tuple[LatchDoc, int], tuple[LatchDoc, int]]:
        async with running(settings, "executor", "risk", handler=capture), \
                role_connections(settings, "ingest", "risk", "operator") as js:
            await buy(js["risk"], settings, 0.2, 40_000.0)  # 80% of the book in BTC
            await market_moves(js["ingest"], settings, 25_000.0)  # equity 10k -> ~7k: a 30% drawdown

            async def liquidated() -> PortfolioSnapshot | None:
                snap = await snapshot(js["operator"])
                return snap if snap.cycle_id.startswith("tick-") else None

            after = await until(liquidated, "the kill-switch liquidation")
            latched, _ = await latch(js["operator"])
            capsys.readouterr()
            code = await asyncio.to_thread(risk_cli, ["reset", "--reason", "test"])
            assert code == 0
            cleared = await latch(js["operator"])
            # The reset must stick: the book is in cash ~30% under a peak still inside the rolling window,
            # and ticks after the reset must measure drawdown from the reset on, not latch again at once.
            seen = tick_lines()

            async def ticked_since_reset() -> bool:
                return tick_lines() >= seen + 5

            await until(ticked_since_reset, "five risk ticks after the reset")
            return latched, after, cleared, await latch(js["operator"])

    latched, after, (cleared, cleared_rev), later = asyncio.run(scenario())
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert latched.halted is True and latched.drawdown >= 0.25
    assert after.holdings == {}
    gate = journal_rows(settings, f"SELECT gate FROM plans WHERE plan_id='{after.plan_id}'")
    assert gate == [("kill_switch",)]
    # Risk applied the operator's signed request: the latch it signed says it is clear, who cleared it and why.
    assert cleared.halted is False and cleared.reason == "test" and cleared.reset_by.startswith("operator:")
    assert cleared.reset_at_ms > 0 and cleared.drawdown == latched.drawdown
    assert printed["halted"] is False and printed["was_latched"] is True and printed["reason"] == "test"
    assert printed["reset_by"] == cleared.reset_by and printed["reset_at_ms"] == cleared.reset_at_ms
    assert later == (cleared, cleared_rev), f"the kill-switch latched again after the operator reset: {later}"
    kills = capture.fields("KILL_SWITCH")
    breached = [k for k in kills if k["msg"].startswith("rolling drawdown breached")]
    resets = [k for k in kills if k["msg"].startswith("operator reset applied")]
    assert len(breached) == 1 and len(resets) == 1 and len(kills) == 2, kills
    assert resets[0]["was_latched"] is True and resets[0]["reason"] == "test"
    assert resets[0]["reset_by"] == cleared.reset_by


def test_kill_switch_rearms_by_itself_after_its_cooldown_in_bars_of_data(nats_server: NatsEndpoint,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """kill_switch_cooldown=2: the tick that latches on the bar of 2024-01-02 re-arms on the first decision on data
    of 2024-01-04 or later.  Ticks on the same data never re-arm it, however long the wall clock runs; `aura risk
    status` says when it will; once re-armed, the drawdown counts from the re-arm, so the old peak does not latch
    it again."""
    settings = tick_settings(nats_server)
    capture = Capture()
    monkeypatch.setenv("AURA_HOME", str(nats_server.home))
    monkeypatch.setenv("AURA_NATS_URL", nats_server.url)
    risk_public = load_public_key(settings.public_key_path)
    params = StrategyParams(kill_switch_cooldown=2, kill_switch_cap=0.5)  # a re-arming switch needs a cap

    async def latch(js_operator: Any) -> tuple[LatchDoc, int]:
        doc, revision, problem = await read_latch(js_operator, risk_public)
        assert problem == "", f"the latch does not verify: {problem}"
        return doc, revision

    def tick_lines() -> int:
        return sum(1 for t in capture.fields("RISK_TICK") if t["msg"].startswith("tick:"))

    async def ticks(n: int) -> None:
        seen = tick_lines()

        async def ticked() -> bool:
            return tick_lines() >= seen + n

        await until(ticked, f"{n} risk ticks")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with role_connections(settings, "ingest", "risk", "operator") as js:
            key = signing_key(settings.keys, "operator")
            await promote(js["operator"], sign_document(params, key, "operator:test", "re-arm after two bars"), key)
            async with running(settings, "executor", "risk", handler=capture):
                await buy(js["risk"], settings, 0.2, 40_000.0)  # 80% of the book in BTC
                await market_moves(js["ingest"], settings, 25_000.0, day=1)  # a 30% drawdown on 2024-01-02

                async def latched() -> LatchDoc | None:
                    doc, _ = await latch(js["operator"])
                    return doc if doc.halted else None

                out["latched"] = await until(latched, "the kill-switch to latch")
                await ticks(4)  # the same bar again and again: no re-arm, whatever the clock says
                out["still"] = await latch(js["operator"])
                capsys.readouterr()
                assert await asyncio.to_thread(risk_cli, ["status", "--json"]) == 0
                out["status"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
                assert await asyncio.to_thread(risk_cli, ["status"]) == 0
                out["status_text"] = capsys.readouterr().out
                await market_moves(js["ingest"], settings, 25_000.0, day=2)  # one bar later: still latched
                await ticks(3)
                out["one_bar"] = await latch(js["operator"])
                await market_moves(js["ingest"], settings, 25_000.0, day=3)  # two bars later: re-armed

                async def rearmed() -> LatchDoc | None:
                    doc, _ = await latch(js["operator"])
                    return doc if not doc.halted else None

                out["rearmed"] = await until(rearmed, "the kill-switch to re-arm")
                rearmed_rev = (await latch(js["operator"]))[1]
                await ticks(5)
                out["later"] = await latch(js["operator"])
                out["rearmed_rev"] = rearmed_rev
        return out

    out = asyncio.run(scenario())
    latched, rearmed = out["latched"], out["rearmed"]
    assert latched.latched_at_ms == T0 + DAY and latched.rearm_at_ms == T0 + 3 * DAY and not latched.capped
    assert latched.drawdown >= 0.25
    assert out["still"][0].halted and out["still"][0].rearm_at_ms == T0 + 3 * DAY
    assert out["one_bar"][0].halted, "re-armed one bar after latching with a cooldown of two"
    status = out["status"]
    assert status["halted"] is True and status["rearm_at"] == "2024-01-04T00:00Z" and "by itself" in status["rearm"]
    text = out["status_text"]  # the same for a person: latched since when, and when it clears by itself
    assert text.startswith("kill-switch: LATCHED since the bar of 2024-01-02T00:00Z"), text
    assert "clears by itself at the first cycle or tick on data of 2024-01-04T00:00Z" in text, text
    assert rearmed.rearmed_at_ms == T0 + 3 * DAY and rearmed.rearm_at_ms == 0 and rearmed.reset_at_ms == 0
    assert rearmed.equity_since_ms > 0  # the rolling drawdown counts equity committed after the re-arm only
    # Re-armed for good: the book is in cash ~30% under a peak still inside the window, and later ticks did not
    # latch it again.
    assert out["later"] == (rearmed, out["rearmed_rev"]), f"latched again after the re-arm: {out['later']}"
    kills = capture.fields("KILL_SWITCH")
    breached = [k for k in kills if k["msg"].startswith("rolling drawdown breached")]
    rearms = [k for k in kills if k["msg"].startswith("re-armed after its cooldown")]
    assert len(breached) == 1 and len(rearms) == 1 and len(kills) == 2, kills
    assert rearms[0]["rearmed_at_ms"] == T0 + 3 * DAY and rearms[0]["cooldown_bars"] == 2
    assert breached[0]["rearm_at_ms"] == T0 + 3 * DAY


async def live_stop_loss_plan(settings: Settings, price: float, cycle_id: str, capture: Capture,
                              ingest: Callable[[Any], Awaitable[None]] | None = None) -> ApprovedPlan:
    """Play ingest (``ingest``, if given, on its connection) and the executor: a snapshot signed with its key holding
    0.1 BTC bought 25% above ``price``, so the stop-loss is hit; then live risk runs until it signs a plan."""
    roles = ("ingest", "executor", "operator") if ingest is not None else ("executor", "operator")
    async with role_connections(settings, *roles) as js:
        if ingest is not None:
            await ingest(js["ingest"])
        basis = executor_signed(settings, PortfolioSnapshot(
            snapshot_id="s-live", cycle_id=cycle_id, plan_id="p-0", status="executed", cash=5000.0,
            holdings={"BTC/USDT": 0.1}, entry_prices={"BTC/USDT": price * 1.25}, equity=5000.0 + 0.1 * price,
            equity_history=[5000.0 + 0.1 * price]))
        await publish(js["executor"], basis, msg_id=basis.snapshot_id)
        async with running(settings, "risk", handler=capture):
            raw = await until(lambda: last_message(js["operator"], ApprovedPlan.SUBJECT), "the live stop-loss plan")
    return decode(raw, ApprovedPlan)


def test_live_tick_reads_public_tickers_without_keys(nats_server: NatsEndpoint, shared_data_dir: Path) -> None:
    """Live mode: prices from the exchange's public ticker endpoint (here the simulator), never with keys; the exit
    plan's data time is the exchange's clock (the simulator's, in 2024), never the host's."""
    from aura.exchange_sim import SimConfig, SimServer

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    capture = Capture()
    with SimServer(config=config) as sim:
        price = float(sim.sim.price("BTCUSDT"))
        settings = tick_settings(nats_server, AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync",
                                 AURA_EXCHANGE_API_URL=sim.base_url)

        venue_from = int(sim.sim.now_ms())
        approved = asyncio.run(live_stop_loss_plan(settings, price, "1d-20240101T0000", capture))
        requests, venue_to = sim.sim.faults.counts(), int(sim.sim.now_ms())
    verify_plan(approved, load_public_key(settings.public_key_path))
    plan = approved.plan
    assert plan.basis_snapshot_id == "s-live" and plan.prices["BTC/USDT"] == price
    assert [(x.side, x.symbol, x.qty, x.reason) for x in plan.legs] == [("sell", "BTC/USDT", 0.1, "stop_loss")]
    assert venue_from <= plan.as_of_ms <= venue_to, (plan.as_of_ms, venue_from, venue_to)
    assert any(path.startswith("GET /api/v3/ticker") for path in requests)
    signed = {"GET /api/v3/account", "POST /api/v3/order", "GET /api/v3/order", "GET /api/v3/myTrades"}
    assert not signed & set(requests), f"the risk service called a private endpoint: {requests}"
    assert not capture.fields("FORGED_SNAPSHOT"), "risk refused the executor-signed snapshot"


@pytest.mark.parametrize("forgery", ["no volume in the bar", "a minimum notional of 1e12"])
def test_a_compromised_ingest_cannot_cancel_a_live_stop_loss_exit(nats_server: NatsEndpoint, shared_data_dir: Path,
                                                                  forgery: str) -> None:
    """Ingest (its own credential, a compromised process) announces the decision bar with the held coin's volume
    at 0, or with its market's minimum notional at 1e12.  The live tick sized its exits with those: the
    participation cap or the lot rounding left nothing to sell, on every bar ingest forged, while BTC fell
    through its stop.  Live, the exits are sized with the venue's own volumes and rules."""
    from aura.exchange_sim import SimConfig, SimServer
    from shared.contracts import MarketRuleMsg

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    capture = Capture()
    with SimServer(config=config) as sim:
        price, eth = float(sim.sim.price("BTCUSDT")), float(sim.sim.price("ETHUSDT"))
        bar = int(sim.sim.now_ms()) // DAY * DAY - DAY  # the newest bar the venue has closed
        settings = tick_settings(nats_server, AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync",
                                 AURA_EXCHANGE_API_URL=sim.base_url)
        closes = np.array([[price, eth], [price, eth]])
        volume = np.array([[900.0, 9000.0], [0.0 if forgery.startswith("no volume") else 900.0, 9000.0]])
        panel = Panel(("BTC/USDT", "ETH/USDT"), np.array([bar - DAY, bar], dtype=np.int64), closes, closes, closes,
                      closes, volume)
        notional = 1e12 if forgery.startswith("a minimum") else 5.0
        markets = [MarketRuleMsg("BTC/USDT", 1e-5, 0.01, 1e-5, notional), MarketRuleMsg("ETH/USDT", 1e-4, 0.01,
                                                                                        1e-4, 5.0)]

        async def forge(js_ingest: Any) -> None:
            await announce_panel(js_ingest, panel, cycle_id_for("1d", bar), markets)

        plan = asyncio.run(live_stop_loss_plan(settings, price, cycle_id_for("1d", bar), capture, forge)).plan
        klines = sum(n for path, n in sim.sim.faults.counts().items() if path.startswith("GET /api/v3/klines"))
    assert [(x.side, x.symbol, x.qty, x.reason) for x in plan.legs] == [("sell", "BTC/USDT", 0.1, "stop_loss")]
    assert klines >= 1  # the venue's own candle was read for its volume
    if forgery.startswith("no volume"):
        said = capture.fields("DATA_DISAGREE")
        assert said and said[0]["symbol"] == "BTC/USDT" and said[0]["announced"] == 0.0 and said[0]["venue"] > 0


def live_target_refusal(nats_server: NatsEndpoint, shared_data_dir: Path, bar: int,
                        ) -> tuple[Any, int, list[DeadLetter], bytes | None, Capture]:
    """Live risk (its clock: the simulator's, at 2024-01-01) handed the signal stage's genuine target for replay
    ``bar``, announced by ingest with its candle object as a real cycle is (so nothing but the data's time can
    make risk refuse it): (target, the exchange's time, risk's dead letters, the newest approved plan, the log)."""
    from aura.exchange_sim import SimConfig, SimServer

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    capture = Capture()
    with SimServer(config=config) as sim:
        settings = tick_settings(nats_server, AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync", AURA_RISK_TICK_S="0",
                                 AURA_EXCHANGE_API_URL=sim.base_url)
        exchange_now = int(sim.sim.now_ms())
        cycle_id, panel, markets = replay_snapshot(bar)

        async def scenario() -> tuple[Any, list[DeadLetter], bytes | None]:
            async with role_connections(settings, "ingest", "signal", "executor", "operator") as js:
                # A genesis basis signed by the executor: the plan has something to be made on.
                basis = executor_signed(settings, PortfolioSnapshot(
                    snapshot_id="s-genesis", cycle_id="genesis", plan_id="", status="genesis", cash=10_000.0,
                    holdings={}, entry_prices={}, equity=10_000.0, equity_history=[10_000.0]))
                await publish(js["executor"], basis, msg_id=basis.snapshot_id)
                async with running(settings, "risk", handler=capture):
                    ready = await announce_panel(js["ingest"], panel, cycle_id, markets)
                    target, _ = make_target(ready, panel, StrategyParams(), 0, None)
                    await publish(js["signal"], target, msg_id=target.target_id)

                    async def answered() -> tuple[list[DeadLetter], bytes | None] | None:
                        letters = await dead_letters(js["operator"], "risk")
                        plan = await last_message(js["operator"], ApprovedPlan.SUBJECT)
                        return (letters, plan) if letters or plan else None

                    letters, plan = await until(answered, "risk's dead letter or plan")
                    return target, letters, plan

        target, letters, plan = asyncio.run(scenario())
    return target, exchange_now, letters, plan, capture


@contextlib.contextmanager
def live_bar(nats_server: NatsEndpoint, shared_data_dir: Path) -> Iterator[tuple[Any, float, float, int, float,
                                                                                   Settings]]:
    """A live risk's venue (the simulator on BTC and ETH from 2024): (simulator, BTC and ETH prices, the bar its
    clock closed last, BTC's close of that bar, live settings against it with no ticks)."""
    from aura.exchange_sim import SimConfig, SimServer

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    with SimServer(config=config) as sim:
        price, eth = float(sim.sim.price("BTCUSDT")), float(sim.sim.price("ETHUSDT"))
        bar = int(sim.sim.now_ms()) // DAY * DAY - DAY
        venue_close = float(sim.sim.market.klines("BTCUSDT", "1d", bar, bar, 1)[0][4])
        yield sim, price, eth, bar, venue_close, tick_settings(
            nats_server, AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync", AURA_RISK_TICK_S="0",
            AURA_EXCHANGE_API_URL=sim.base_url)


def test_live_risk_refuses_a_target_on_held_closes_the_venue_never_printed(nats_server: NatsEndpoint,
                                                                          shared_data_dir: Path) -> None:
    """A compromised ingest announces the venue's newest bar with the held BTC at half its close; signal computes its
    target on that data in good faith.  Planned, the false 'drawdown' latched the kill-switch and sold the BTC.  Live
    risk checks the held coins' decision-bar closes against the venue's own klines first: refused, dead-lettered
    as forged_data, no plan, no latch."""
    from shared.contracts import MarketRuleMsg

    capture = Capture()
    with live_bar(nats_server, shared_data_dir) as (_sim, price, eth, bar, venue_close, settings):
        closes = np.array([[venue_close, eth], [venue_close / 2, eth]])
        panel = Panel(("BTC/USDT", "ETH/USDT"), np.array([bar - DAY, bar], dtype=np.int64), closes, closes, closes,
                      closes, np.full_like(closes, 50_000.0))
        markets = [MarketRuleMsg("BTC/USDT", 1e-5, 0.01, 1e-5, 5.0), MarketRuleMsg("ETH/USDT", 1e-4, 0.01, 1e-4, 5.0)]

        async def scenario() -> tuple[list[DeadLetter], bytes | None, Any]:
            async with role_connections(settings, "ingest", "signal", "executor", "operator") as js:
                basis = executor_signed(settings, PortfolioSnapshot(
                    snapshot_id="s-held", cycle_id=cycle_id_for("1d", bar - DAY), plan_id="p-0", status="executed",
                    cash=2000.0, holdings={"BTC/USDT": 0.2}, entry_prices={"BTC/USDT": price},
                    equity=2000.0 + 0.2 * price, equity_history=[2000.0 + 0.2 * price]))
                await publish(js["executor"], basis, msg_id=basis.snapshot_id)
                async with running(settings, "risk", handler=capture):
                    ready = await announce_panel(js["ingest"], panel, cycle_id_for("1d", bar), markets)
                    target, _ = make_target(ready, panel, StrategyParams(), 0, None)
                    await publish(js["signal"], target, msg_id=target.target_id)
                    letters = await until(lambda: dead_letters(js["operator"], "risk"), "risk's dead letter")
                    latch = await read_latch(js["operator"], load_public_key(settings.public_key_path))
                    return letters, await last_message(js["operator"], ApprovedPlan.SUBJECT), latch

        letters, plan, latch = asyncio.run(scenario())
    assert [x.reason for x in letters] == ["forged_data"], [(x.reason, x.error) for x in letters]
    assert "of held BTC/USDT" in letters[0].error and "not the venue's" in letters[0].error
    assert plan is None and not latch[0].halted
    assert capture.fields("FORGED_TARGET")


def test_live_risk_never_signs_a_close_the_venue_cannot_confirm(nats_server: NatsEndpoint,
                                                                shared_data_dir: Path) -> None:
    """A compromised ingest keeps a held coin the venue no longer lists (ETH, delisted) in its data with a close
    100x the last one.  Risk values it at its last mark, as it must; but the signed plan carried the announced
    closes, the executor marked its book at them, and the next snapshot's fake equity peak latched the kill-switch
    on the tick after.  The plan's prices are the closes risk planned with: ETH's made-up close is not among them."""
    from aura.exchange_sim import SimConfig, SimServer
    from shared.contracts import MarketRuleMsg

    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-01-01")
    capture = Capture()
    with SimServer(config=config) as sim:
        price, eth = float(sim.sim.price("BTCUSDT")), float(sim.sim.price("ETHUSDT"))
        sim.sim.market.delisted.add("ETHUSDT")
        bar = int(sim.sim.now_ms()) // DAY * DAY - DAY
        venue_close = float(sim.sim.market.klines("BTCUSDT", "1d", bar, bar, 1)[0][4])
        settings = tick_settings(nats_server, AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync", AURA_RISK_TICK_S="0",
                                 AURA_EXCHANGE_API_URL=sim.base_url)
        closes = np.array([[venue_close, eth], [venue_close, eth * 100]])
        panel = Panel(("BTC/USDT", "ETH/USDT"), np.array([bar - DAY, bar], dtype=np.int64), closes, closes, closes,
                      closes, np.full_like(closes, 50_000.0))
        markets = [MarketRuleMsg("BTC/USDT", 1e-5, 0.01, 1e-5, 5.0), MarketRuleMsg("ETH/USDT", 1e-4, 0.01, 1e-4, 5.0)]

        async def scenario() -> bytes | None:
            async with role_connections(settings, "ingest", "signal", "executor", "operator") as js:
                basis = executor_signed(settings, PortfolioSnapshot(
                    snapshot_id="s-held", cycle_id=cycle_id_for("1d", bar - DAY), plan_id="p-0", status="executed",
                    cash=2000.0, holdings={"BTC/USDT": 0.2, "ETH/USDT": 2.0},
                    entry_prices={"BTC/USDT": price, "ETH/USDT": eth},
                    equity=2000.0 + 0.2 * price + 2 * eth, equity_history=[2000.0 + 0.2 * price + 2 * eth]))
                await publish(js["executor"], basis, msg_id=basis.snapshot_id)
                async with running(settings, "risk", handler=capture):
                    ready = await announce_panel(js["ingest"], panel, cycle_id_for("1d", bar), markets)
                    target, _ = make_target(ready, panel, StrategyParams(), 0, None)
                    await publish(js["signal"], target, msg_id=target.target_id)
                    return await until(lambda: last_message(js["operator"], ApprovedPlan.SUBJECT), "risk's plan")

        raw = asyncio.run(scenario())
    plan = decode(raw, ApprovedPlan).plan
    assert plan.prices.get("BTC/USDT") == venue_close
    assert "ETH/USDT" not in plan.prices, plan.prices
    said = [f for f in capture.fields("DATA_DISAGREE") if f.get("symbol") == "ETH/USDT"]
    assert said and "last mark" in said[0]["msg"], capture.fields("DATA_DISAGREE")


def test_a_live_cycles_exits_are_sized_by_the_venues_rules_not_the_announced_ones(nats_server: NatsEndpoint,
                                                                                   shared_data_dir: Path) -> None:
    """A compromised ingest announces a minimum notional of 1e12 for the held BTC: sized by it, the cycle's
    kill-switch exit rounded to nothing (the latch set, nothing sold until a tick).  Live risk sizes a cycle's
    legs by the venue's own market rules, as its ticks do: the exit is in the signed plan."""
    from shared.contracts import MarketRuleMsg

    with live_bar(nats_server, shared_data_dir) as (_sim, price, eth, bar, venue_close, settings):
        closes = np.array([[venue_close, eth], [venue_close, eth]])
        panel = Panel(("BTC/USDT", "ETH/USDT"), np.array([bar - DAY, bar], dtype=np.int64), closes, closes, closes,
                      closes, np.full_like(closes, 50_000.0))
        markets = [MarketRuleMsg("BTC/USDT", 1e-5, 0.01, 1e-5, 1e12), MarketRuleMsg("ETH/USDT", 1e-4, 0.01, 1e-4, 5.0)]

        async def scenario() -> bytes | None:
            async with role_connections(settings, "ingest", "signal", "executor", "operator") as js:
                equity = 2000.0 + 0.2 * venue_close
                basis = executor_signed(settings, PortfolioSnapshot(
                    snapshot_id="s-held", cycle_id=cycle_id_for("1d", bar - DAY), plan_id="p-0", status="executed",
                    cash=2000.0, holdings={"BTC/USDT": 0.2}, entry_prices={"BTC/USDT": price}, equity=equity,
                    equity_history=[3 * equity, equity]))  # two thirds down from its peak: the switch latches
                await publish(js["executor"], basis, msg_id=basis.snapshot_id)
                async with running(settings, "risk"):
                    ready = await announce_panel(js["ingest"], panel, cycle_id_for("1d", bar), markets)
                    target, _ = make_target(ready, panel, StrategyParams(), 0, None)
                    await publish(js["signal"], target, msg_id=target.target_id)
                    return await until(lambda: last_message(js["operator"], ApprovedPlan.SUBJECT), "risk's plan")

        plan = decode(asyncio.run(scenario()), ApprovedPlan).plan
    assert plan.halted
    assert [(leg.symbol, leg.side, leg.reason) for leg in plan.legs] == [("BTC/USDT", "sell", "kill_switch")], \
        plan.legs


def test_live_risk_refuses_a_target_on_data_too_old_for_the_exchanges_clock(nats_server: NatsEndpoint,
                                                                          shared_data_dir: Path) -> None:
    """Live mode: a target whose data bar closed more than one bar plus the grace before the exchange's clock (not
    the local clock: the simulator's is in 2024) is refused ([STALE_PLAN], dead letter stale_plan), never planned."""
    target, exchange_now, letters, plan, capture = live_target_refusal(nats_server, shared_data_dir, 2300)
    assert target.as_of_ms < exchange_now - 2 * DAY  # a bar of 2023 in the bundled replay: months old
    assert [x.reason for x in letters] == ["stale_plan"], [(x.reason, x.error) for x in letters]
    assert plan is None
    (line,) = capture.fields("STALE_PLAN")
    assert line["exchange_ms"] >= exchange_now and line["as_of_ms"] == target.as_of_ms


def test_live_risk_refuses_a_target_on_a_bar_the_exchange_has_not_closed(nats_server: NatsEndpoint,
                                                                        shared_data_dir: Path) -> None:
    """Live mode: data dated after the exchange's clock (a compromised ingest's announcement; the kill-switch
    counts its cooldown on these times, so it would re-arm early) is refused as future_data, never planned."""
    target, exchange_now, letters, plan, capture = live_target_refusal(nats_server, shared_data_dir, 2400)
    assert target.as_of_ms > exchange_now + 30 * DAY  # a bar of March 2024, the simulator at 2024-01-01
    assert [x.reason for x in letters] == ["future_data"], [(x.reason, x.error) for x in letters]
    assert plan is None
    (line,) = capture.fields("STALE_PLAN")
    assert line["why"].startswith("future") and line["as_of_ms"] == target.as_of_ms
    assert any(x.get("target_id") == target.target_id for x in capture.fields("FORGED_TARGET"))


def test_a_target_on_data_older_than_a_stale_notice_is_not_traded(nats_server: NatsEndpoint) -> None:
    """Ingest announced bar t, then declared bar t+1 incomplete; the signal stage's (real) target on bar t arrives
    after that notice (signal lagging): risk refuses it (dead letter stale_data, the cycle aborted and
    journaled). A target on the stale bar itself, once ingest completes it on a later poll, is approved and
    executed as usual."""
    settings = tick_settings(nats_server)
    capture = Capture()
    params = StrategyParams()  # version 0: nothing promoted
    late_cycle, late_panel, late_markets = replay_snapshot(STALE_BAR - 1, settings.snapshot_bars)
    stale_cycle, stale_panel, stale_markets = replay_snapshot(STALE_BAR, settings.snapshot_bars)
    stale_as_of = int(stale_panel.timestamps[-1])
    warm = replay_signal_state(STALE_BAR - 6, STALE_BAR - 2, params, settings.snapshot_bars)  # a confirmed regime

    async def cycle_snapshot(js_operator: Any, cycle_id: str) -> PortfolioSnapshot | None:
        snap = await snapshot(js_operator)
        return snap if snap.cycle_id == cycle_id else None

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot, bytes, list[Any], list[ApprovedPlan]]:
        async with running(settings, "executor", "risk", handler=capture), \
                role_connections(settings, "ingest", "signal", "operator") as js:
            late_ready = await announce_panel(js["ingest"], late_panel, late_cycle, late_markets)
            late, state = make_target(late_ready, late_panel, params, 0, warm)
            await publish(js["ingest"], DataStale(cycle_id=stale_cycle, timeframe="1d", reason="incomplete snapshot",
                                                  missing=["ETH/USDT"], as_of_ms=stale_as_of),
                          msg_id=f"stale-{stale_cycle}")

            async def noticed() -> bool:
                return bool(capture.fields("DATA_STALE"))

            await until(noticed, "risk to log the stale notice")
            await publish(js["signal"], late, msg_id=late.target_id)
            refused = await until(lambda: cycle_snapshot(js["operator"], late_cycle), "the late target's cycle to end")
            ready = await announce_panel(js["ingest"], stale_panel, stale_cycle, stale_markets)  # completed
            same_bar, _ = make_target(ready, stale_panel, params, 0, state)
            await publish(js["signal"], same_bar, msg_id=same_bar.target_id)
            approved = await until(lambda: cycle_snapshot(js["operator"], stale_cycle), "the completed bar's cycle")
            return (refused, approved, encode(late), await dead_letters(js["operator"], "risk"),
                    await approved_plans(js["operator"]))

    refused, approved, late_bytes, letters, plans = asyncio.run(scenario())
    assert refused.status == "aborted" and refused.plan_id == ""
    assert approved.status == "executed" and approved.plan_id != ""
    assert len(letters) == 1, [x.reason for x in letters]
    letter = letters[0]
    assert letter.reason == "stale_data" and stale_cycle in letter.error
    assert letter.payload_sha256 == hashlib.sha256(late_bytes).hexdigest()  # the late target itself
    assert late_bytes.startswith(letter.payload)
    events = journal_rows(settings, f"SELECT detail FROM events WHERE kind='cycle_aborted' AND cycle_id='{late_cycle}'")
    assert len(events) == 1 and f"data stale since {stale_cycle}" in events[0][0]
    # The late target's cycle never got a plan; the completed bar's plan is the one the executor ran.
    assert [p.plan.cycle_id for p in plans] == [stale_cycle] and plans[0].plan.plan_id == approved.plan_id
    assert [leg.side for leg in plans[0].plan.legs] and approved.holdings, "the completed bar's plan should trade"
    assert not capture.fields("FORGED_TARGET")
