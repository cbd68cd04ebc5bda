"""Risk verifies what it is handed, on a real secured nats-server with the risk and executor service bodies.

With bus permissions only the signal service may publish targets and only the executor snapshots, so each
attack here is published with that principal's own credential: a compromised signal service (or a process
holding the executor's bus credential but not its signing key) keeps its bus rights, and risk must still refuse
what it publishes.  For each forgery the test asserts the dead letter's reason, the [FORGED_TARGET] /
[FORGED_SNAPSHOT] log, that no plan was ever published for it, and that risk keeps consuming: the next genuine
target, computed by the signal stage's own function on data ingest published, is approved and executed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.js.errors import APIError

from aura.strategy.params import StrategyParams
from services.risk.latch import read_latch
from services.signal.service import make_target
from shared.bus import publish
from shared.config import Settings
from shared.contracts import (
    ApprovedPlan,
    DataReady,
    DataStale,
    DeadLetter,
    PortfolioSnapshot,
    TargetPortfolio,
    decode,
    encode,
)
from shared.health import HealthState
from shared.signing import load_public_key
from tests.bus_helpers import (
    Capture,
    announce_panel,
    approved_plans,
    dead_letters,
    journal_rows,
    reforged_target,
    replay_signal_state,
    replay_snapshot,
    role_connections,
    running,
    snapshot,
    stream_messages,
    until,
)
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PARAMS = StrategyParams()  # version 0: nothing promoted
FIRST_BAR = 700  # mid-2019 in the bundled replay: a complete universe, the signal stage past its warm-up


@dataclass
class Rig:
    settings: Settings
    capture: Capture
    js: dict[str, Any]  # principal -> JetStream context on that principal's own connection
    bar: int = FIRST_BAR
    state: Any = None  # the signal stage's state, carried from cycle to cycle
    health: dict[str, HealthState] = field(default_factory=dict)

    async def next_cycle(self) -> tuple[TargetPortfolio, Any]:
        """Play ingest for the next replay bar (candle object + DataReady), and compute the genuine target the
        signal stage would publish for it (not published yet).  Returns (target, the data ready)."""
        cycle_id, panel, markets = replay_snapshot(self.bar, self.settings.snapshot_bars)
        self.bar += 1
        ready = await announce_panel(self.js["ingest"], panel, cycle_id, markets)
        target, self.state = make_target(ready, panel, PARAMS, 0, self.state)
        return target, ready

    async def publish_target(self, target: TargetPortfolio) -> None:
        await publish(self.js["signal"], target, msg_id=target.target_id)

    async def cycle_closed(self, cycle_id: str, status: str) -> PortfolioSnapshot:
        async def closed() -> PortfolioSnapshot | None:
            snap = await snapshot(self.js["operator"])
            return snap if snap.cycle_id == cycle_id and snap.status == status else None

        return await until(closed, f"cycle {cycle_id} to end {status}")

    async def letters(self, count: int) -> list[DeadLetter]:
        async def enough() -> list[DeadLetter] | None:
            found = await dead_letters(self.js["operator"], "risk")
            return found if len(found) >= count else None

        return await until(enough, f"{count} dead letters from risk")

    async def genuine_cycle_executes(self) -> PortfolioSnapshot:
        """Risk is still consuming: the next genuine target is approved and the executor runs its plan."""
        target, _ = await self.next_cycle()
        await self.publish_target(target)
        return await self.cycle_closed(target.cycle_id, "executed")


@asynccontextmanager
async def rig(nats_server: NatsEndpoint, before_boot: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
              **extra: str) -> AsyncIterator[Rig]:
    """Executor and risk bodies (each on its own connection, with its own credential) and the roles the test
    plays: ingest, signal, executor (its bus credential only) and the operator (reading state).  Yields once
    risk is ready (subscribed to stale notices, consuming targets); ``before_boot`` runs before either starts."""
    settings = nats_server.settings(**{"AURA_RISK_TICK_S": "0.2", "AURA_LOG_LEVEL": "DEBUG", **extra})
    capture = Capture()
    async with role_connections(settings, "ingest", "signal", "executor", "operator") as js:
        the_rig = Rig(settings, capture, js, state=replay_signal_state(FIRST_BAR - 5, FIRST_BAR - 1, PARAMS,
                                                                        settings.snapshot_bars))
        if before_boot is not None:
            await before_boot(js)
        async with running(settings, "executor", "risk", handler=capture) as contexts:
            the_rig.health = {name: ctx.health for name, ctx in contexts.items()}

            async def risk_ready() -> bool:
                return any(x["msg"] == "risk ready" for x in capture.fields("BOOT"))

            await until(risk_ready, "the risk service to be ready", timeout=120)
            yield the_rig


def forged_lines(capture: Capture, target: TargetPortfolio) -> list[dict[str, Any]]:
    return [x for x in capture.fields("FORGED_TARGET") if x.get("target_id") == target.target_id]


async def refused_forgeries(r: Rig, make: Callable[[TargetPortfolio], list[TargetPortfolio]],
                            ) -> tuple[TargetPortfolio, list[TargetPortfolio], list[DeadLetter]]:
    """Ingest announces a cycle; a compromised signal publishes forgeries of its genuine target.  Waits for risk
    to refuse them all and for the executor to close the cycle as aborted; returns (genuine, forged, letters)."""
    genuine, _ = await r.next_cycle()
    forged = make(genuine)
    before = len(await dead_letters(r.js["operator"], "risk"))
    for target in forged:
        await r.publish_target(target)
    letters = (await r.letters(before + len(forged)))[before:]
    await r.cycle_closed(genuine.cycle_id, "aborted")
    return genuine, forged, letters


def assert_refused_as_forged(r: Rig, forged: list[TargetPortfolio], letters: list[DeadLetter],
                             details: list[str]) -> None:
    """Each forgery: dead-lettered forged_target with the expected detail (its own bytes in the letter), one
    [FORGED_TARGET] line naming it, and its cycle journaled as aborted by risk."""
    assert len(letters) == len(forged)
    for target, letter, detail in zip(forged, letters, details, strict=True):
        raw = encode(target)
        assert letter.reason == "forged_target", (letter.reason, letter.error)
        assert detail in letter.error, (detail, letter.error)
        assert letter.subject == TargetPortfolio.SUBJECT
        assert letter.payload_size == len(raw) and letter.payload_sha256 == hashlib.sha256(raw).hexdigest()
        lines = forged_lines(r.capture, target)
        assert len(lines) == 1 and detail in lines[0]["msg"], lines
    cycle = forged[0].cycle_id
    events = journal_rows(r.settings, f"SELECT detail FROM events WHERE kind='cycle_aborted' AND cycle_id='{cycle}'")
    assert len(events) == 1 and '"stage": "risk"' in events[0][0] and "forged_target" in events[0][0], events


async def assert_no_plan_for(r: Rig, refused: list[TargetPortfolio]) -> None:
    plans = await approved_plans(r.js["operator"])
    ids = {t.target_id for t in refused}
    cycles = {t.cycle_id for t in refused}
    assert not [p for p in plans if p.plan.target_id in ids or p.plan.cycle_id in cycles]


def test_a_target_priced_off_the_candle_data_is_refused(nats_server: NatsEndpoint) -> None:
    """The target's BTC price at 1/90 of the close ingest published (the executor's order cap is checked at
    the plan's price, so this would buy 90x the notional): refused, never planned on any part of it."""

    async def scenario() -> tuple[list[TargetPortfolio], list[DeadLetter], PortfolioSnapshot, Rig]:
        async with rig(nats_server) as r:
            def cheap_btc(genuine: TargetPortfolio) -> list[TargetPortfolio]:
                assert genuine.weights.get("BTC/USDT", 0) > 0, "the genuine target should hold BTC"
                prices = {**genuine.prices, "BTC/USDT": genuine.prices["BTC/USDT"] / 90}
                # Everything else made consistent with the lie (a careful forger), the cycle and data are real.
                return [reforged_target(genuine, prices=prices, weights={"BTC/USDT": 0.95})]

            _, forged, letters = await refused_forgeries(r, cheap_btc)
            executed = await r.genuine_cycle_executes()
            await assert_no_plan_for(r, forged)
            return forged, letters, executed, r

    forged, letters, executed, r = asyncio.run(scenario())
    assert_refused_as_forged(r, forged, letters, ["prices differ from the candle data for ['BTC/USDT']"])
    assert executed.plan_id and executed.holdings
    assert r.health["risk"].counters.get("forged_targets") == 1


def test_targets_with_impossible_weights_are_refused(nats_server: NatsEndpoint) -> None:
    """Weights summing above 1, a negative weight, a NaN weight, weights on symbols outside the data's
    universe: all refused.  A 10,000-symbol target never even reaches risk: the stream refuses it."""

    strangers = {f"X{i:04d}/USDT": 1e-4 for i in range(1000)} | {"币/USDT": 1e-4}  # sums to ~0.1

    async def scenario() -> dict[str, Any]:
        async with rig(nats_server) as r:
            def bad_weights(genuine: TargetPortfolio) -> list[TargetPortfolio]:
                return [reforged_target(genuine, weights={"BTC/USDT": 0.7, "LINK/USDT": 0.6}),
                        reforged_target(genuine, weights={"BTC/USDT": -0.5, "LINK/USDT": 0.5}),
                        reforged_target(genuine, weights={**genuine.weights, **strangers})]

            genuine, forged, letters = await refused_forgeries(r, bad_weights)
            # NaN has no JSON spelling: msgspec writes it as null, which no consumer decodes as a weight.
            nan = reforged_target(genuine, weights={"BTC/USDT": float("nan")})
            before = len(await dead_letters(r.js["operator"], "risk"))
            await r.publish_target(nan)
            nan_letter = (await r.letters(before + 1))[before]
            # 10,000 symbols: over the targets stream's per-message limit, refused by the server at publish.
            flood = reforged_target(genuine, weights={f"S{i:05d}/USDT": 1e-5 for i in range(10_000)})
            with pytest.raises(APIError) as refused_publish:
                await r.publish_target(flood)
            executed = await r.genuine_cycle_executes()
            await assert_no_plan_for(r, [*forged, nan, flood])
            stored = [msgspec.json.decode(raw)["target_id"]
                      for raw in await stream_messages(r.js["operator"], TargetPortfolio.SUBJECT)]
            return {"r": r, "forged": forged, "letters": letters, "nan": nan, "nan_letter": nan_letter,
                    "refused_publish": refused_publish.value, "flood": flood, "stored": stored,
                    "executed": executed}

    out = asyncio.run(scenario())
    r: Rig = out["r"]
    assert_refused_as_forged(r, out["forged"], out["letters"], [
        "weights sum to 1.300000 > 1", "weights must be finite and non-negative",
        "weights name 1001 symbols outside the data's universe"])
    assert out["letters"][2].payload_size > len(out["letters"][2].payload)  # only a prefix travels in the letter
    nan_letter: DeadLetter = out["nan_letter"]
    assert nan_letter.reason == "malformed" and nan_letter.payload_sha256 == hashlib.sha256(
        encode(out["nan"])).hexdigest()
    assert "message size exceeds maximum" in str(out["refused_publish"]), out["refused_publish"]
    assert out["flood"].target_id not in out["stored"]
    assert out["executed"].plan_id and r.health["risk"].counters.get("forged_targets") == 3


def unsigned_copy_with_a_fake_peak(real: PortfolioSnapshot) -> PortfolioSnapshot:
    """The executor's snapshot republished as is (same id) but with a 10x equity peak and no signature: what a
    holder of the executor's bus credential, without its signing key, can publish.  Planned on, its peak would
    be a ~90% drawdown: the kill-switch would latch and liquidate."""
    return msgspec.structs.replace(real, equity_history=[real.equity * 10, *real.equity_history], signature="",
                                   key_id="")


def test_an_unsigned_snapshot_is_never_used_as_the_basis(nats_server: NatsEndpoint) -> None:
    """Risk has verified the executor's newest snapshot; then an unsigned copy with a fake equity peak is
    republished (same snapshot id, new message id).  Risk refuses it ([FORGED_SNAPSHOT], counted), never lets
    its peak reach the kill-switch (no latch, no liquidation), and plans the next genuine target on the
    executor's signed snapshot, which the executor executes."""

    async def scenario() -> dict[str, Any]:
        async with rig(nats_server) as r:
            first = await r.genuine_cycle_executes()
            real = await snapshot(r.js["operator"])
            assert real.snapshot_id == first.snapshot_id and real.signature

            async def risk_verified_it() -> bool:  # a tick on it, with nothing in flight
                return any(x.get("basis") == real.snapshot_id and x["msg"].startswith("tick:")
                           for x in r.capture.fields("RISK_TICK"))

            await until(risk_verified_it, "a risk tick on the executor's newest snapshot")
            await publish(r.js["executor"], unsigned_copy_with_a_fake_peak(real), msg_id=f"forged-{real.snapshot_id}")

            async def refused() -> bool:
                return any("unsigned" in x["msg"] for x in r.capture.fields("FORGED_SNAPSHOT"))

            await until(refused, "risk to refuse the unsigned snapshot")
            ticks_before = len(r.capture.fields("RISK_TICK"))

            async def ticked_on_it() -> bool:  # the tick, too, kept running on the verified snapshot
                return sum(1 for x in r.capture.fields("RISK_TICK")[ticks_before:] if x["msg"].startswith("tick:")
                           and x.get("basis") == real.snapshot_id) >= 3

            await until(ticked_on_it, "three risk ticks after the forgery")
            resumed = await r.genuine_cycle_executes()
            doc, revision, problem = await read_latch(r.js["operator"],
                                                      load_public_key(r.settings.public_key_path))
            return {"r": r, "real": real, "resumed": resumed, "latch": (doc.halted, revision, problem),
                    "plans": await approved_plans(r.js["operator"])}

    out = asyncio.run(scenario())
    r: Rig = out["r"]
    refusals = [x for x in r.capture.fields("FORGED_SNAPSHOT") if "unsigned" in x["msg"]]
    assert refusals and all(x.get("basis") == out["real"].snapshot_id for x in refusals)
    assert r.health["risk"].counters.get("forged_snapshots", 0) >= len(refusals)
    assert not r.capture.fields("KILL_SWITCH"), "the forged equity peak reached the kill-switch"
    assert out["latch"] == (False, 0, ""), "the latch was written"
    plan = out["plans"][-1].plan
    assert plan.cycle_id == out["resumed"].cycle_id and plan.basis_snapshot_id == out["real"].snapshot_id
    assert plan.gate != "kill_switch" and not plan.halted and out["resumed"].status == "executed"
    assert all(x.get("drawdown") is None or x["drawdown"] < 0.5 for x in r.capture.fields("RISK_TICK"))


def test_an_unsigned_snapshot_published_before_risk_read_the_real_one_does_not_stall_trading(
        nats_server: NatsEndpoint) -> None:
    """The same forgery, published right after the executor's snapshot and before risk read it (no tick here:
    risk reads snapshots only for targets).  Risk must not plan on the forgery, and trading must go on: the
    next genuine cycles are planned on a snapshot the executor signed and executed."""

    async def scenario() -> dict[str, Any]:
        # A target waits for the plan risk published last to be closed, at most INFLIGHT_WAIT_S (10 s) or until
        # that plan is older than the cycle timeout: here the forgery hides the first plan's snapshot and the
        # executor refuses the second plan, so each of the next two cycles would wait the full 10 s.  A 3 s cycle
        # timeout bounds those waits (the executor says its book again within milliseconds of a refusal).
        async with rig(nats_server, AURA_RISK_TICK_S="0", AURA_CYCLE_TIMEOUT_S="3") as r:
            first = await r.genuine_cycle_executes()
            real = await snapshot(r.js["operator"])
            assert real.snapshot_id == first.snapshot_id
            await publish(r.js["executor"], unsigned_copy_with_a_fake_peak(real), msg_id=f"forged-{real.snapshot_id}")
            outcomes = []
            for _ in range(2):
                target, _ = await r.next_cycle()
                await r.publish_target(target)

                async def settled(cycle_id: str = target.cycle_id) -> tuple[str, str] | None:
                    snap = await snapshot(r.js["operator"])
                    if snap.cycle_id == cycle_id:
                        return snap.status, snap.plan_id
                    for letter in await dead_letters(r.js["operator"], "executor"):
                        plan = decode(letter.payload, ApprovedPlan).plan
                        if plan.cycle_id == cycle_id:
                            return f"rejected {letter.reason}", plan.basis_snapshot_id
                    return None

                outcomes.append(await until(settled, f"cycle {target.cycle_id} to be settled"))
                if outcomes[-1][0] == "executed":
                    break
            return {"r": r, "outcomes": outcomes, "plans": await approved_plans(r.js["operator"])}

    out = asyncio.run(scenario())
    r: Rig = out["r"]
    assert not r.capture.fields("KILL_SWITCH"), "the forged equity peak reached the kill-switch"
    assert all(not p.plan.halted and p.plan.gate != "kill_switch" for p in out["plans"])
    # The first plan may be computed on the snapshot risk verified before (the forgery hid the newest one)
    # and be refused as stale_basis; the executor then says its book again, and the next cycle executes.
    assert out["outcomes"][-1][0] == "executed", out["outcomes"]


def test_a_stale_notice_far_in_the_future_is_refused(nats_server: NatsEndpoint) -> None:
    """A DataStale dated as_of 9e15 (year ~287,000) would make risk refuse every later target as stale: it is
    refused (dead letter stale_out_of_bounds) and the next genuine target is approved."""

    async def scenario() -> tuple[Rig, list[DeadLetter], PortfolioSnapshot]:
        async with rig(nats_server) as r:
            notice = DataStale(cycle_id="1d-forged", timeframe="1d", reason="forged", missing=[],
                               as_of_ms=9_000_000_000_000_000)
            await publish(r.js["ingest"], notice, msg_id="stale-forged")
            await r.letters(1)
            executed = await r.genuine_cycle_executes()
            return r, await dead_letters(r.js["operator"], "risk"), executed

    r, letters, executed = asyncio.run(scenario())
    assert len(letters) == 1
    letter = letters[0]
    assert letter.reason == "stale_out_of_bounds" and letter.subject == DataStale.SUBJECT
    assert decode(letter.payload, DataStale).as_of_ms == 9_000_000_000_000_000
    assert not [x for x in r.capture.fields("DATA_STALE") if x.get("cycle_id") == "1d-forged"]
    assert r.health["risk"].counters.get("stale_notices_refused") == 1
    assert executed.plan_id and executed.status == "executed"  # the later target was not refused as stale


def test_a_far_future_stale_notice_found_at_boot_is_not_adopted(nats_server: NatsEndpoint) -> None:
    """The same notice published while risk was down: risk reads the newest notice when it boots and refuses to
    adopt it there too, so the next genuine target is still approved."""
    notice = DataStale(cycle_id="1d-forged", timeframe="1d", reason="forged", missing=[],
                       as_of_ms=9_000_000_000_000_000)

    async def forge_notice(js: dict[str, Any]) -> None:
        await publish(js["ingest"], notice, msg_id="stale-forged")

    async def scenario() -> tuple[Rig, PortfolioSnapshot]:
        async with rig(nats_server, before_boot=forge_notice) as r:
            return r, await r.genuine_cycle_executes()

    r, executed = asyncio.run(scenario())
    assert executed.plan_id and executed.status == "executed"
    assert r.health["risk"].counters.get("stale_notices_refused") == 1
    assert not [x for x in r.capture.fields("DATA_STALE") if x.get("cycle_id") == "1d-forged"]


def test_junk_on_the_data_subject_does_not_hide_the_real_announcement(nats_server: NatsEndpoint) -> None:
    """Malformed messages on aura.data.ready right after ingest's genuine announcement (a broken or compromised
    ingest; CI once caught this race in the system test): risk still checks the genuine target against the real
    announcement and approves it, and the executor still knows the cycle was announced, so nothing stalls."""

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot, list[DeadLetter]]:
        async with rig(nats_server) as r:
            target, ready = await r.next_cycle()
            wrong = msgspec.json.decode(encode(ready))
            wrong["v"] = 99
            for junk in (b"\x00not json", msgspec.json.encode(wrong)):
                await r.js["ingest"].publish(DataReady.SUBJECT, junk, stream="AURA_DATA")
            await r.publish_target(target)
            executed = await r.cycle_closed(target.cycle_id, "executed")
            # The next cycle: its announcement is the newest again, and it runs as usual.
            return executed, await r.genuine_cycle_executes(), await dead_letters(r.js["operator"], "risk")

    first, second, letters = asyncio.run(scenario())
    assert first.plan_id and second.plan_id and first.cycle_id != second.cycle_id
    assert letters == [], [(x.reason, x.error) for x in letters]
