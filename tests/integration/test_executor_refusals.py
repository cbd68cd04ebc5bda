"""The executor's refusals and failure policy on a real nats-server and journal: a stale basis, an aborted
cycle, and a plan whose handling keeps failing:

* Not started (no journal row): dead-lettered after MAX_DELIVERIES with reason ``handler_failed`` and the
  rejection journaled, so one poison plan cannot block every later plan (the consumer has
  max_ack_pending=1).
* Started (its row says "executing", orders may be live): retried for as long as it fails, never
  dead-lettered, and /readyz says which plan is stuck until it goes through.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aura.natsd import free_port
from services.executor import runner
from services.executor import service as executor_service
from shared.bus import connect, ensure_streams, last_message, publish
from shared.config import SERVICE_NAMES, Settings, load_settings
from shared.consumer import MAX_DELIVERIES
from shared.contracts import (
    ApprovedPlan,
    CycleAborted,
    DeadLetter,
    PlanBody,
    PlanLeg,
    PortfolioSnapshot,
    decode,
    plan_id_for,
)
from shared.health import HealthState
from shared.service import ServiceContext
from shared.signing import generate_keypair, load_private_key, sign_plan
from tests.bus_helpers import snapshot, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def settings_for(home: Path, url: str) -> Settings:
    env = {"AURA_HOME": str(home), "AURA_NATS_URL": url}
    env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
    return load_settings(env)


@asynccontextmanager
async def executor(settings: Settings) -> AsyncIterator[ServiceContext]:
    generate_keypair(settings.private_key_path, settings.public_key_path)
    logger = logging.getLogger("aura.test.executor-poison")
    nc = await connect(settings.nats_url, "executor", logger)
    js = nc.jetstream()
    await ensure_streams(js, settings.dedup_window_s)
    ctx = ServiceContext("executor", settings, logger, nc, js, HealthState(service="executor"), asyncio.Event())
    task = asyncio.create_task(executor_service.run(ctx))
    await until(lambda: last_message(js, PortfolioSnapshot.SUBJECT), "the genesis snapshot")
    try:
        yield ctx
    finally:
        ctx.stop.set()
        try:
            await asyncio.wait_for(task, timeout=15)
        finally:
            await nc.close()


async def send_buy(ctx: ServiceContext, cycle_id: str, basis_id: str | None = None) -> PlanBody:
    """A plan signed with the risk key on the current basis (unless ``basis_id``): it passes every check
    before execution."""
    basis = basis_id or (await snapshot(ctx.js)).snapshot_id
    fields: dict[str, Any] = {
        "cycle_id": cycle_id, "as_of_ms": 1_704_067_200_000, "data_digest": "d", "target_id": f"t-{cycle_id}",
        "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis, "gate": "pass",
        "halted": False, "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.01, 40_000.0, "enter")], "reasons": [],
        "prices": {"BTC/USDT": 40_000.0}}
    body = PlanBody(plan_id=plan_id_for(fields), **fields)
    await publish(ctx.js, sign_plan(body, load_private_key(ctx.settings.private_key_path)), msg_id=body.plan_id)
    return body


async def executed(ctx: ServiceContext, body: PlanBody) -> PortfolioSnapshot | None:
    snap = await snapshot(ctx.js)
    return snap if snap.plan_id == body.plan_id and snap.status in ("executed", "partial") else None


async def dead_letters(ctx: ServiceContext) -> list[DeadLetter]:
    sub = await ctx.js.subscribe(f"{DeadLetter.SUBJECT}.executor", ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                out.append(decode((await sub.next_msg(timeout=0.5)).data, DeadLetter))
            except Exception:
                return out
    finally:
        await sub.unsubscribe()


def journal(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{settings.journal_path}?mode=ro", uri=True, timeout=2)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_plan_that_fails_before_it_starts_is_dead_lettered_and_does_not_block_the_next(
        nats_server: NatsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path / "home", nats_server.url)
    monkeypatch.setattr(executor_service, "RETRY_BASE_S", 0.05)
    real_run_plan = executor_service.run_plan
    calls = {"n": 0}

    async def broken_run_plan(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise RuntimeError("injected defect before anything is journaled")

    async def scenario() -> tuple[list[DeadLetter], PortfolioSnapshot]:
        async with executor(settings) as ctx:
            monkeypatch.setattr(executor_service, "run_plan", broken_run_plan)
            poison = await send_buy(ctx, "1d-20240101T0000")

            async def lettered() -> list[DeadLetter]:
                return [d for d in await dead_letters(ctx) if d.reason == "handler_failed"]

            letters = await until(lettered, "the poison plan's dead letter")
            assert decode(letters[0].payload, ApprovedPlan).plan.plan_id == poison.plan_id
            monkeypatch.setattr(executor_service, "run_plan", real_run_plan)
            follower = await send_buy(ctx, "1d-20240102T0000")
            snap = await until(lambda: executed(ctx, follower), "the next plan to execute")
            return letters, snap

    letters, snap = asyncio.run(scenario())
    assert calls["n"] == MAX_DELIVERIES, "tried exactly MAX_DELIVERIES times before giving up"
    assert len(letters) == 1 and f"after {MAX_DELIVERIES} deliveries" in letters[0].error
    assert snap.holdings.get("BTC/USDT", 0) > 0
    rejected = journal(settings, "SELECT cycle_id, detail FROM events WHERE kind='plan_rejected'")
    assert [r[0] for r in rejected] == ["1d-20240101T0000"] and "handler_failed" in rejected[0][1]


def test_a_plan_that_fails_mid_execution_is_retried_until_it_goes_through(
        nats_server: NatsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path / "home", nats_server.url)
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
        async with executor(settings) as ctx:
            body = await send_buy(ctx, "1d-20240101T0000")
            seen: list[tuple[bool, str]] = []

            async def done() -> PortfolioSnapshot | None:
                seen.append(ctx.health.checks["plans"]())
                return await executed(ctx, body)

            snap = await until(done, "the stuck plan to go through")
            return seen, snap, await dead_letters(ctx), ctx.health.checks["plans"]()

    seen, snap, letters, after = asyncio.run(scenario())
    assert calls["n"] == failures + 1
    assert letters == [], "a plan that may have live orders must never be dead-lettered"
    assert snap.holdings.get("BTC/USDT", 0) > 0
    stuck = [text for ok, text in seen if not ok]
    assert stuck and "keeps failing mid-execution" in stuck[0], "readiness never reported the stuck plan"
    assert after == (True, "ok"), "readiness did not recover once the plan went through"
    assert journal(settings, "SELECT status FROM plans") == [("executed",)]
    resumed = journal(settings, "SELECT count(*) FROM events WHERE kind='plan_resumed'")[0][0]
    assert resumed == failures, "each redelivery resumes the journaled plan instead of starting it anew"


def test_a_cycle_aborted_upstream_still_ends_in_the_journal(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    """Every cycle ends in SQLite: one that ingest (stale data) or signal (no decision bar) aborts gets an
    event and an 'aborted' snapshot under its cycle id, and that snapshot is published for the next cycle."""
    settings = settings_for(tmp_path / "home", nats_server.url)

    async def scenario() -> PortfolioSnapshot:
        async with executor(settings) as ctx:
            abort = CycleAborted(cycle_id="1d-20240105T0000", stage="ingest", reason="stale data: missing ETH/USDT")
            await publish(ctx.js, abort, msg_id="abort-ingest-1d-20240105T0000-a1")

            async def ended() -> PortfolioSnapshot | None:
                snap = await snapshot(ctx.js)
                return snap if snap.cycle_id == abort.cycle_id else None

            return await until(ended, "the aborted cycle's snapshot")

    snap = asyncio.run(scenario())
    assert snap.status == "aborted" and snap.plan_id == ""
    rows = journal(settings, "SELECT cycle_id, status FROM snapshots WHERE status != 'genesis'")
    assert rows == [("1d-20240105T0000", "aborted")]
    events = journal(settings, "SELECT cycle_id, detail FROM events WHERE kind='cycle_aborted'")
    assert len(events) == 1 and events[0][0] == "1d-20240105T0000" and "missing ETH/USDT" in events[0][1]


def test_a_signed_plan_on_a_portfolio_that_no_longer_exists_is_refused(nats_server: NatsEndpoint,
                                                                        tmp_path: Path) -> None:
    """Correctly signed, new cycle, but computed on an older snapshot: executing it would trade on holdings
    that have changed since, so it is dead-lettered as stale_basis and nothing is journaled or ordered."""
    settings = settings_for(tmp_path / "home", nats_server.url)

    async def scenario() -> list[DeadLetter]:
        async with executor(settings) as ctx:
            await send_buy(ctx, "1d-20240101T0000", basis_id="s-a-portfolio-from-before")

            async def lettered() -> list[DeadLetter]:
                return [d for d in await dead_letters(ctx) if d.reason == "stale_basis"]

            return await until(lettered, "the stale-basis dead letter")

    letters = asyncio.run(scenario())
    assert len(letters) == 1 and "s-a-portfolio-from-before" in letters[0].error
    assert journal(settings, "SELECT count(*) FROM plans")[0][0] == 0
    assert journal(settings, "SELECT count(*) FROM intents")[0][0] == 0
    rejected = journal(settings, "SELECT cycle_id, detail FROM events WHERE kind='plan_rejected'")
    assert len(rejected) == 1 and "stale_basis" in rejected[0][1]
