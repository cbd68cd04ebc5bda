"""The executor's refusals and failure policy on a real, secured nats-server and journal: a stale basis, an
aborted cycle (closed only if ingest announced it last; any other abort is an event, never an equity point),
and a plan whose handling keeps failing.  Every other party plays with its own credential (risk publishes
plans, ingest announces data, each stage aborts on its own subject, the operator reads dead letters):

* Not started (no journal row): dead-lettered after MAX_DELIVERIES with reason ``handler_failed`` and the
  rejection journaled, so one poison plan cannot block every later plan (the consumer has
  max_ack_pending=1).  This is for faults of the plan's handling; an exchange that does not answer is never
  a reason to drop a plan (tests/executor_live/test_exchange_outage.py).
* Started (its row says "executing", orders may be live): retried for as long as it fails, never
  dead-lettered, and /readyz says which plan is stuck until it goes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pytest
from nats.js import JetStreamContext

from aura.strategy.types import Panel
from services.executor import runner
from services.executor import service as executor_service
from shared.bus import publish
from shared.candles import digest, encode_panel
from shared.config import Settings
from shared.consumer import MAX_DELIVERIES
from shared.contracts import (
    ApprovedPlan,
    CycleAborted,
    DataReady,
    DataStale,
    DeadLetter,
    PlanBody,
    PlanLeg,
    PortfolioSnapshot,
    decode,
    plan_id_for,
    stream_of,
)
from shared.credentials import signing_key
from shared.cycles import as_of_of_cycle, cycle_id_for
from shared.objects import candle_writer
from shared.service import ServiceContext
from shared.signing import sign_plan
from tests.bus_helpers import Capture, dead_letters, journal_rows, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
DAY = 86_400_000


@dataclass
class Rig:
    """The executor's service body (its own connection and rights) and the parties around it, each on its own
    credential: risk publishes plans and reads the basis snapshot, ingest announces cycles and aborts them,
    signal aborts cycles, the operator reads dead letters and checks state."""

    ctx: ServiceContext
    risk: JetStreamContext
    ingest: JetStreamContext
    signal: JetStreamContext
    operator: JetStreamContext

    @property
    def settings(self) -> Settings:
        return self.ctx.settings


@asynccontextmanager
async def executor(bus: NatsEndpoint, capture: Capture | None = None) -> AsyncIterator[Rig]:
    settings = bus.settings()
    async with running(settings, "executor", handler=capture) as contexts, \
            role_connections(settings, "risk", "ingest", "signal", "operator") as others:
        yield Rig(contexts["executor"], **others)


async def send_buy(rig: Rig, cycle_id: str, basis_id: str | None = None) -> PlanBody:
    """A plan signed with the risk key on the current basis (unless ``basis_id``), published by risk: it passes
    every check before execution."""
    basis = basis_id or (await snapshot(rig.risk)).snapshot_id
    fields: dict[str, Any] = {
        "cycle_id": cycle_id, "as_of_ms": as_of_of_cycle(cycle_id), "data_digest": "d", "target_id": f"t-{cycle_id}",
        "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis, "gate": "pass",
        "halted": False, "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.01, 40_000.0, "enter")], "reasons": [],
        "prices": {"BTC/USDT": 40_000.0}}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(rig.risk, sign_plan(body, signing_key(rig.settings.keys, "risk")), msg_id=body.plan_id)
    return body


async def executed(rig: Rig, body: PlanBody) -> PortfolioSnapshot | None:
    snap = await snapshot(rig.operator)
    return snap if snap.plan_id == body.plan_id and snap.status in ("executed", "partial") else None


async def executor_letters(rig: Rig) -> list[DeadLetter]:
    return await dead_letters(rig.operator, "executor")


def test_a_plan_that_fails_before_it_starts_is_dead_lettered_and_does_not_block_the_next(
        nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = nats_server.settings()
    monkeypatch.setattr(executor_service, "RETRY_BASE_S", 0.05)
    real_run_plan = executor_service.run_plan
    calls = {"n": 0}

    async def broken_run_plan(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise RuntimeError("injected defect before anything is journaled")

    async def scenario() -> tuple[list[DeadLetter], PortfolioSnapshot]:
        async with executor(nats_server) as rig:
            monkeypatch.setattr(executor_service, "run_plan", broken_run_plan)
            poison = await send_buy(rig, "1d-20240101T0000")

            async def lettered() -> list[DeadLetter]:
                return [d for d in await executor_letters(rig) if d.reason == "handler_failed"]

            letters = await until(lettered, "the poison plan's dead letter")
            assert decode(letters[0].payload, ApprovedPlan).plan.plan_id == poison.plan_id
            monkeypatch.setattr(executor_service, "run_plan", real_run_plan)
            follower = await send_buy(rig, "1d-20240102T0000")
            snap = await until(lambda: executed(rig, follower), "the next plan to execute")
            return letters, snap

    letters, snap = asyncio.run(scenario())
    assert calls["n"] == MAX_DELIVERIES, "tried exactly MAX_DELIVERIES times before giving up"
    assert len(letters) == 1 and f"after {MAX_DELIVERIES} deliveries" in letters[0].error
    assert snap.holdings.get("BTC/USDT", 0) > 0
    rejected = journal_rows(settings, "SELECT cycle_id, detail FROM events WHERE kind='plan_rejected'")
    assert [r[0] for r in rejected] == ["1d-20240101T0000"] and "handler_failed" in rejected[0][1]


def test_a_plan_that_fails_mid_execution_is_retried_until_it_goes_through(
        nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = nats_server.settings()
    monkeypatch.setattr(executor_service, "RETRY_BASE_S", 0.05)
    real_execute = runner.execute_plan
    failures = MAX_DELIVERIES + 2  # more failures than a not-started message would be given
    calls = {"n": 0}

    async def flaky_execute(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise RuntimeError("injected failure after the plan row says 'executing'")
        return await real_execute(*args, **kwargs)

    monkeypatch.setattr(runner, "execute_plan", flaky_execute)

    async def scenario() -> tuple[list[tuple[bool, str]], PortfolioSnapshot, list[DeadLetter], tuple[bool, str]]:
        async with executor(nats_server) as rig:
            body = await send_buy(rig, "1d-20240101T0000")
            seen: list[tuple[bool, str]] = []

            async def done() -> PortfolioSnapshot | None:
                seen.append(rig.ctx.health.checks["plans"]())
                return await executed(rig, body)

            snap = await until(done, "the stuck plan to go through")
            return seen, snap, await executor_letters(rig), rig.ctx.health.checks["plans"]()

    seen, snap, letters, after = asyncio.run(scenario())
    assert calls["n"] == failures + 1
    assert letters == [], "a plan that may have live orders must never be dead-lettered"
    assert snap.holdings.get("BTC/USDT", 0) > 0
    stuck = [text for ok, text in seen if not ok]
    assert stuck and "keeps failing mid-execution" in stuck[0], "readiness never reported the stuck plan"
    assert after == (True, "ok"), "readiness did not recover once the plan went through"
    assert journal_rows(settings, "SELECT status FROM plans") == [("executed",)]
    resumed = journal_rows(settings, "SELECT count(*) FROM events WHERE kind='plan_resumed'")[0][0]
    assert resumed == failures, "each redelivery resumes the journaled plan instead of starting it anew"


def candles(as_of_ms: int) -> bytes:
    t = 5
    close = np.array([[40_000.0], [40_100.0], [40_200.0], [40_300.0], [40_400.0]])
    return encode_panel(Panel(("BTC/USDT",), as_of_ms - np.arange(t - 1, -1, -1, dtype=np.int64) * DAY, close,
                              close * 1.01, close * 0.99, close, np.full((t, 1), 1e6)))


async def announce_ready(rig: Rig, cycle_id: str, as_of_ms: int) -> None:
    """Ingest's announcement of a complete snapshot: the candle object, then its DataReady."""
    blob = candles(as_of_ms)
    await (await candle_writer(rig.ingest)).put(digest(blob), blob)
    ready = DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=as_of_ms, digest=digest(blob),
                      symbols=["BTC/USDT"], bars=5, markets=[])
    await publish(rig.ingest, ready, msg_id=f"ready-{cycle_id}")


async def cycle_snapshot(rig: Rig, cycle_id: str) -> PortfolioSnapshot | None:
    snap = await snapshot(rig.operator)
    return snap if snap.cycle_id == cycle_id else None


def test_a_cycle_aborted_upstream_still_ends_in_the_journal(nats_server: NatsEndpoint) -> None:
    """Every cycle ends in SQLite: one that ingest (stale data) or signal (no decision bar) aborts gets an
    event and an 'aborted' snapshot under its cycle id, and that snapshot is published for the next cycle.
    Each abort comes from its stage's own credential, for the cycle ingest announced last."""
    settings = nats_server.settings()
    stale_cycle, skipped_cycle = "1d-20240105T0000", "1d-20240106T0000"

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot]:
        async with executor(nats_server) as rig:
            stale = DataStale(cycle_id=stale_cycle, timeframe="1d", reason="missing ETH/USDT", missing=["ETH/USDT"],
                              as_of_ms=1_704_412_800_000)
            await publish(rig.ingest, stale, msg_id=f"stale-{stale_cycle}")
            abort = CycleAborted(cycle_id=stale_cycle, stage="ingest", reason="stale data: missing ETH/USDT")
            await publish(rig.ingest, abort, msg_id=f"abort-ingest-{stale_cycle}")
            first = await until(lambda: cycle_snapshot(rig, stale_cycle), "the stale cycle's snapshot")

            await announce_ready(rig, skipped_cycle, 1_704_499_200_000)
            skipped = CycleAborted(cycle_id=skipped_cycle, stage="signal", reason="not a decision bar")
            await publish(rig.signal, skipped, msg_id=f"abort-signal-{skipped_cycle}")
            second = await until(lambda: cycle_snapshot(rig, skipped_cycle), "the skipped cycle's snapshot")
            return first, second

    first, second = asyncio.run(scenario())
    for snap in (first, second):
        assert snap.status == "aborted" and snap.plan_id == ""
        assert snap.signature and snap.key_id, "the executor signs every snapshot it publishes"
    rows = journal_rows(settings, "SELECT cycle_id, status FROM snapshots WHERE status != 'genesis' ORDER BY rowid")
    assert rows == [(stale_cycle, "aborted"), (skipped_cycle, "aborted")]
    events = journal_rows(settings, "SELECT cycle_id, detail FROM events WHERE kind='cycle_aborted' ORDER BY id")
    assert [e[0] for e in events] == [stale_cycle, skipped_cycle]
    assert "missing ETH/USDT" in events[0][1] and "not a decision bar" in events[1][1]
    assert journal_rows(settings, "SELECT count(*) FROM events WHERE kind='abort_ignored'") == [(0,)]


def test_an_abort_for_a_cycle_ingest_did_not_announce_is_only_an_event(nats_server: NatsEndpoint) -> None:
    """Aborts for cycles that are not the newest announced one (junk ids, an old cycle) never close a cycle:
    no snapshot row, no equity point for the kill-switch window; each is journaled as `abort_ignored`."""
    settings = nats_server.settings()
    capture = Capture()
    old, newest = "1d-20240105T0000", "1d-20240106T0000"

    async def scenario() -> tuple[PortfolioSnapshot, PortfolioSnapshot]:
        async with executor(nats_server, capture) as rig:
            genesis = await snapshot(rig.operator)
            await announce_ready(rig, old, 1_704_412_800_000)
            await announce_ready(rig, newest, 1_704_499_200_000)
            for stage, js, cycle in (("risk", rig.risk, "junk-0001"), ("ingest", rig.ingest, "junk-0002"),
                                     ("signal", rig.signal, old)):  # announced, but no longer the newest
                abort = CycleAborted(cycle_id=cycle, stage=stage, reason="flood")
                await publish(js, abort, msg_id=f"abort-{stage}-{cycle}")

            async def ignored() -> bool:
                return journal_rows(settings, "SELECT count(*) FROM events WHERE kind='abort_ignored'") == [(3,)]

            await until(ignored, "the three aborts to be journaled as ignored")
            await asyncio.sleep(0.5)
            unchanged = await snapshot(rig.operator)
            # The newest announced cycle still closes normally.
            await publish(rig.signal, CycleAborted(cycle_id=newest, stage="signal", reason="not a decision bar"),
                          msg_id=f"abort-signal-{newest}")
            closed = await until(lambda: cycle_snapshot(rig, newest), "the newest cycle's snapshot")
            assert unchanged == genesis, "an ignored abort published a new snapshot"
            return unchanged, closed

    unchanged, closed = asyncio.run(scenario())
    assert unchanged.status == "genesis" and closed.status == "aborted"
    rows = journal_rows(settings, "SELECT cycle_id, status FROM snapshots WHERE status != 'genesis'")
    assert rows == [(newest, "aborted")], "an abort for an unannounced cycle became an equity point"
    ignored = journal_rows(settings, "SELECT cycle_id FROM events WHERE kind='abort_ignored' ORDER BY id")
    assert [r[0] for r in ignored] == ["junk-0001", "junk-0002", old]
    assert journal_rows(settings, "SELECT cycle_id FROM events WHERE kind='cycle_aborted'") == [(newest,)]
    assert len(capture.fields("UNKNOWN_CYCLE")) == 3


def test_a_signed_plan_on_a_portfolio_that_no_longer_exists_is_refused(nats_server: NatsEndpoint) -> None:
    """Correctly signed, new cycle, but computed on an older snapshot: executing it would trade on holdings
    that have changed since, so it is dead-lettered as stale_basis and nothing is journaled or ordered."""
    settings = nats_server.settings()

    async def scenario() -> list[DeadLetter]:
        async with executor(nats_server) as rig:
            await send_buy(rig, "1d-20240101T0000", basis_id="s-a-portfolio-from-before")

            async def lettered() -> list[DeadLetter]:
                return [d for d in await executor_letters(rig) if d.reason == "stale_basis"]

            return await until(lettered, "the stale-basis dead letter")

    letters = asyncio.run(scenario())
    assert len(letters) == 1 and "s-a-portfolio-from-before" in letters[0].error
    assert journal_rows(settings, "SELECT count(*) FROM plans")[0][0] == 0
    assert journal_rows(settings, "SELECT count(*) FROM intents")[0][0] == 0
    rejected = journal_rows(settings, "SELECT cycle_id, detail FROM events WHERE kind='plan_rejected'")
    assert len(rejected) == 1 and "stale_basis" in rejected[0][1]


def test_a_compromised_ingest_cannot_invent_cycles_to_dilute_the_kill_switch_window(nats_server: NatsEndpoint) -> None:
    """Ingest may announce a stale bar and abort it, but only as that bar: a notice (or a DataReady) whose id does
    not name its bar, or a notice dated more than one bar after the newest announced bar (the replay's clock),
    announces nothing, so its abort is an event only.  Each bar then closes once: aborts add at most one equity
    point per bar that has closed, never one per message (the kill-switch's rolling window counts points)."""
    settings = nats_server.settings()
    ready_ms = 1_704_412_800_000  # 2024-01-05
    named = cycle_id_for("1d", ready_ms + DAY)

    async def scenario() -> None:
        async with executor(nats_server) as rig:
            await announce_ready(rig, cycle_id_for("1d", ready_ms), ready_ms)
            forged = [DataStale(cycle_id="junk-1", timeframe="1d", reason="flood", as_of_ms=ready_ms + DAY),
                      DataStale(cycle_id=cycle_id_for("1d", ready_ms + 5 * DAY), timeframe="1d", reason="flood",
                                as_of_ms=ready_ms + 5 * DAY)]
            for notice in forged:
                await publish(rig.ingest, notice, msg_id=f"stale-{notice.cycle_id}")
                await publish(rig.ingest, CycleAborted(cycle_id=notice.cycle_id, stage="ingest", reason="flood"),
                              msg_id=f"abort-{notice.cycle_id}")

            await until(lambda: _ignored(settings, 2), "the forged cycles' aborts to be journaled as ignored")
            # A DataReady under an id that is not its bar announces nothing either.
            await announce_ready(rig, "junk-2", ready_ms + DAY)
            await publish(rig.ingest, CycleAborted(cycle_id="junk-2", stage="ingest", reason="flood"),
                          msg_id="abort-junk-2")
            await until(lambda: _ignored(settings, 3), "the junk DataReady's abort to be ignored")
            # The genuine next bar, stale: announced, aborted, closed once.
            stale = DataStale(cycle_id=named, timeframe="1d", reason="missing ETH/USDT", as_of_ms=ready_ms + DAY)
            await publish(rig.ingest, stale, msg_id=f"stale-{named}")
            await publish(rig.ingest, CycleAborted(cycle_id=named, stage="ingest", reason="stale data"),
                          msg_id=f"abort-{named}")
            await until(lambda: cycle_snapshot(rig, named), "the genuine stale bar's snapshot")

    asyncio.run(scenario())
    rows = journal_rows(settings, "SELECT cycle_id, status FROM snapshots WHERE status != 'genesis'")
    assert rows == [(named, "aborted")], "a forged cycle became an equity point"
    ignored = journal_rows(settings, "SELECT cycle_id FROM events WHERE kind='abort_ignored' ORDER BY id")
    assert [r[0] for r in ignored] == ["junk-1", cycle_id_for("1d", ready_ms + 5 * DAY), "junk-2"]


async def _ignored(settings: Settings, n: int) -> bool:
    return journal_rows(settings, "SELECT count(*) FROM events WHERE kind='abort_ignored'") == [(n,)]


def test_stale_bars_in_a_row_each_close_once_and_the_replay_moves_on(nats_server: NatsEndpoint) -> None:
    """A hole of several bars in replayed data: each stale bar is one bar after the last one closed, so each is
    announced and closes (one equity point per bar); a notice that skips a bar is still refused."""
    settings = nats_server.settings()
    ready_ms = 1_704_412_800_000
    bars = [cycle_id_for("1d", ready_ms + k * DAY) for k in (1, 2, 3)]

    async def scenario() -> None:
        async with executor(nats_server) as rig:
            await announce_ready(rig, cycle_id_for("1d", ready_ms), ready_ms)
            for k, cycle in enumerate(bars, start=1):
                stale = DataStale(cycle_id=cycle, timeframe="1d", reason="hole", as_of_ms=ready_ms + k * DAY)
                await publish(rig.ingest, stale, msg_id=f"stale-{cycle}")
                await publish(rig.ingest, CycleAborted(cycle_id=cycle, stage="ingest", reason="stale data"),
                              msg_id=f"abort-{cycle}")
                await until(lambda cycle=cycle: cycle_snapshot(rig, cycle), f"the stale bar {cycle} to close")
            skipped = cycle_id_for("1d", ready_ms + 5 * DAY)  # bar 4 never announced: two bars after bar 3
            await publish(rig.ingest, DataStale(cycle_id=skipped, timeframe="1d", reason="hole",
                                                as_of_ms=ready_ms + 5 * DAY), msg_id=f"stale-{skipped}")
            await publish(rig.ingest, CycleAborted(cycle_id=skipped, stage="ingest", reason="stale data"),
                          msg_id=f"abort-{skipped}")
            await until(lambda: _ignored(settings, 1), "the abort of a bar two ahead to be ignored")

    asyncio.run(scenario())
    rows = journal_rows(settings, "SELECT cycle_id, status FROM snapshots WHERE status != 'genesis' ORDER BY seq")
    assert rows == [(cycle, "aborted") for cycle in bars]


def test_aborts_naming_a_closed_cycle_do_not_make_the_executor_flood_its_snapshot_stream(
        nats_server: NatsEndpoint) -> None:
    """An abort for a cycle already closed is acked, and the closing snapshot said once more so a stage that
    missed it sees it (a redelivered abort after a crash).  Before: said again for every such abort, so a
    compromised signal (or ingest) sending a thousand of them made the executor store a thousand snapshot copies
    in AURA_EXEC, pushing the fills and snapshots the console reads out of the stream.  Now only an abort of the
    newest closed cycle republishes, within an allowance per stage."""
    capture = Capture()
    cycle = "1d-20240105T0000"

    async def newest_seq(rig: Rig) -> int:
        msg = await rig.operator.get_last_msg(stream_of(PortfolioSnapshot.SUBJECT), PortfolioSnapshot.SUBJECT,
                                              direct=True)
        return int(msg.seq or 0)

    async def scenario() -> tuple[int, int, int]:
        async with executor(nats_server, capture) as rig:
            await announce_ready(rig, cycle, 1_704_412_800_000)
            await publish(rig.signal, CycleAborted(cycle_id=cycle, stage="signal", reason="not a decision bar"),
                          msg_id=f"abort-signal-{cycle}")
            await until(lambda: cycle_snapshot(rig, cycle), "the cycle's snapshot")
            before = await newest_seq(rig)
            flood = 200
            for i in range(flood):
                await publish(rig.signal, CycleAborted(cycle_id=cycle, stage="signal", reason=f"again {i}"),
                              msg_id=f"flood-{i}")

            async def acked() -> bool:
                return sum("cycle already closed" in r.getMessage() for r in capture.records) >= flood

            await until(acked, "every repeated abort to be acked")
            await asyncio.sleep(0.3)
            return before, await newest_seq(rig), len(await executor_letters(rig))

    before, after, letters = asyncio.run(scenario())
    assert 1 <= after - before <= 3, (before, after)  # said again, but not once per abort
    assert letters == 0


def test_a_signed_plan_listing_one_order_many_times_is_refused(nats_server: NatsEndpoint) -> None:
    """A compromised risk holds its key: it signed a plan of five identical BTC buys, each within the per-order cap,
    together five times it.  No planner lists an order twice (shared/plan_checks.py): the plan is refused before
    anything is journaled or sent, dead-lettered as malformed_plan, logged [FORGED_PLAN], and the next honest plan
    executes."""
    settings = nats_server.settings()
    capture = Capture()

    async def scenario() -> tuple[list[DeadLetter], PortfolioSnapshot]:
        async with executor(nats_server, capture) as rig:
            basis = (await snapshot(rig.risk)).snapshot_id
            fields: dict[str, Any] = {
                "cycle_id": "1d-20240101T0000", "as_of_ms": 1_704_067_200_000, "data_digest": "d",
                "target_id": "t-x", "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis,
                "gate": "pass", "halted": False, "reasons": [], "prices": {"BTC/USDT": 40_000.0},
                "legs": [PlanLeg(i, "BTC/USDT", "buy", 0.02, 40_000.0, "enter") for i in range(5)]}
            body = PlanBody(plan_id=plan_id_for(fields), **fields)
            await publish(rig.risk, sign_plan(body, signing_key(rig.settings.keys, "risk")), msg_id=body.plan_id)

            async def lettered() -> list[DeadLetter]:
                return [d for d in await executor_letters(rig) if d.reason == "malformed_plan"]

            letters = await until(lettered, "the malformed plan's dead letter")
            follower = await send_buy(rig, "1d-20240102T0000")
            return letters, await until(lambda: executed(rig, follower), "the next plan to execute")

    letters, snap = asyncio.run(scenario())
    assert len(letters) == 1 and "legs 0 and 1 both buy 'BTC/USDT'" in letters[0].error, letters
    assert journal_rows(settings, "SELECT count(*) FROM intents WHERE cycle_id='1d-20240101T0000'")[0][0] == 0
    assert snap.holdings.get("BTC/USDT", 0) == pytest.approx(0.01, rel=0.01)  # the honest plan's buy alone
    forged = capture.fields("FORGED_PLAN")
    assert forged and "no planner makes" in forged[0]["msg"] and "legs 0 and 1" in forged[0]["reason"], forged


def test_signed_plans_under_ids_no_cycle_has_are_refused(nats_server: NatsEndpoint) -> None:
    """A compromised risk signs plans the executor would each take for a new cycle: buys under a made-up id (one
    after another, each paying fees), a buy dressed as a risk tick, a bar id of the year 9999 (the journal's newest
    cycle from then on).  Only a bar's plan named by its own bar may buy, once a bar; a tick only sells; and (paper:
    the newest bar ingest announced is the clock) a bar's plan dated after it, named by it, is refused without
    closing its cycle.  Each is refused before anything is journaled or sent ([FORGED_PLAN]: malformed_plan,
    future_plan), and the bar's honest plan runs."""
    settings = nats_server.settings()
    capture = Capture()

    async def scenario() -> tuple[list[DeadLetter], PortfolioSnapshot]:
        async with executor(nats_server, capture) as rig:
            await announce_ready(rig, "1d-20240101T0000", 1_704_067_200_000)
            basis = (await snapshot(rig.risk)).snapshot_id
            for cycle_id, as_of in (("churn-1", 1_704_067_200_000), ("tick-0123456789abcdef", 1_704_067_200_000),
                                    ("1d-99991231T0000", 1_704_067_200_000),
                                    ("1d-99991230T0000", 253_402_128_000_000)):
                fields: dict[str, Any] = {
                    "cycle_id": cycle_id, "as_of_ms": as_of, "data_digest": "d", "target_id": f"t-{cycle_id}",
                    "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis, "gate": "pass",
                    "halted": False, "reasons": [], "prices": {"BTC/USDT": 40_000.0},
                    "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.01, 40_000.0, "enter")]}
                body = PlanBody(plan_id=plan_id_for(fields), **fields)
                await publish(rig.risk, sign_plan(body, signing_key(rig.settings.keys, "risk")), msg_id=body.plan_id)

            async def lettered() -> list[DeadLetter]:
                found = [d for d in await executor_letters(rig) if d.reason in ("malformed_plan", "future_plan")]
                return found if len(found) == 4 else []

            letters = await until(lettered, "the four plans' dead letters")
            honest = await send_buy(rig, "1d-20240101T0000")
            return letters, await until(lambda: executed(rig, honest), "the bar's own plan to execute")

    letters, snap = asyncio.run(scenario())
    errors = sorted(letter.error for letter in letters)
    assert sum("neither a risk tick nor the 1d bar its data names" in e for e in errors) == 2, errors
    assert sum("a tick only exits" in e for e in errors) == 1, errors
    assert [x.reason for x in letters if "after the newest bar ingest announced" in x.error] == ["future_plan"]
    assert journal_rows(settings, "SELECT DISTINCT cycle_id FROM plans") == [("1d-20240101T0000",)]
    assert journal_rows(settings, "SELECT MAX(cycle_id) FROM snapshots WHERE cycle_id LIKE '1d-%'") == [
        ("1d-20240101T0000",)]  # the journal's newest bar (Journal.newest_bar_cycle)
    assert snap.holdings.get("BTC/USDT", 0) == pytest.approx(0.01, rel=0.01)  # the honest plan's buy alone
    assert len(capture.fields("FORGED_PLAN")) == 4


def test_a_signed_plan_under_another_plans_id_is_refused(nats_server: NatsEndpoint) -> None:
    """A compromised risk signs an ETH buy under the id of a BTC plan the executor already has.  The executor keys
    its journal, its idempotency and its order ids on the plan id: taken as that plan's redelivery, a plan B under
    the id of a plan A still executing skipped the one-trade-per-cycle, basis and books checks and placed B's legs
    under A's order ids (found by an audit).  A plan id that is not the digest of the plan's contents is refused
    before anything is journaled, dead-lettered as malformed_plan."""
    settings = nats_server.settings()
    capture = Capture()

    async def scenario() -> tuple[list[DeadLetter], PortfolioSnapshot]:
        async with executor(nats_server, capture) as rig:
            first = await send_buy(rig, "1d-20240101T0000")
            await until(lambda: executed(rig, first), "the genuine plan to execute")
            basis = (await snapshot(rig.risk)).snapshot_id
            legs = [PlanLeg(0, "ETH/USDT", "buy", 0.5, 2_000.0, "enter")]
            other = msgspec.structs.replace(first, cycle_id="1d-20240102T0000", basis_snapshot_id=basis, legs=legs,
                                            prices={"ETH/USDT": 2_000.0})
            await publish(rig.risk, sign_plan(other, signing_key(rig.settings.keys, "risk")), msg_id="p-reused")

            async def lettered() -> list[DeadLetter]:
                return [d for d in await executor_letters(rig) if d.reason == "malformed_plan"]

            letters = await until(lettered, "the plan's dead letter")
            return letters, await snapshot(rig.operator)

    letters, snap = asyncio.run(scenario())
    assert len(letters) == 1 and "is not the digest of the plan's contents" in letters[0].error, letters
    assert "ETH/USDT" not in snap.holdings
    assert journal_rows(settings, "SELECT count(*) FROM intents WHERE symbol='ETH/USDT'")[0][0] == 0
