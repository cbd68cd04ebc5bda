"""A live executor on the venue simulator closes an aborted cycle (one equity point) only for a bar that has
closed by the venue's clock and is newer than the last bar a snapshot closed.

The attack (a compromised ingest, with only its own credential): announce a ``DataReady`` for a bar days ahead
of the venue's clock, or for a bar long gone (each id names its own bar; no candle object is needed, nothing
reads one for an abort), then abort it on ingest's own subject.  Every pair became an "aborted" snapshot, an
equity point at the current equity, so 90 of them fill the kill-switch's rolling window with flat points and
hide any peak: the issue's point 5, by way of data notices instead of stale ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shared.bus import publish
from shared.contracts import CycleAborted, DataReady
from shared.cycles import cycle_id_for
from tests.bus_helpers import journal_rows, role_connections, running, snapshot, until
from tests.executor_live.live_service import live_settings, live_venue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DAY = 86_400_000


async def announce_and_abort(js_ingest: Any, as_of_ms: int) -> str:
    cycle_id = cycle_id_for("1d", as_of_ms)
    ready = DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=as_of_ms, digest="0" * 64, symbols=["BTC/USDT"],
                      bars=1, markets=[])
    await publish(js_ingest, ready, msg_id=f"r-{cycle_id}")
    await publish(js_ingest, CycleAborted(cycle_id=cycle_id, stage="ingest", reason="flood"), msg_id=f"a-{cycle_id}")
    return cycle_id


def test_aborts_of_bars_ahead_of_the_venue_or_behind_the_journal_are_no_equity_points(
        nats_server: Any, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with live_venue(shared_data_dir, monkeypatch) as sim:
        settings = live_settings(nats_server, sim)

        async def scenario() -> dict[str, Any]:
            async with running(settings, "executor"), role_connections(settings, "ingest", "operator") as js:
                now = int(sim.sim.now_ms())
                closed_bar = now - now % DAY - DAY  # the bar the venue's clock closed last
                points = len((await snapshot(js["operator"])).equity_history)
                # The genuine case: the bar that just closed, aborted, is an equity point.
                genuine = await announce_and_abort(js["ingest"], closed_bar)

                async def closed() -> bool:
                    return (await snapshot(js["operator"])).cycle_id == genuine

                await until(closed, "the genuine abort to close its cycle")
                # The attack: ten bars ahead of the venue's clock, then five bars before the one just closed.
                invented = [await announce_and_abort(js["ingest"], closed_bar + k * DAY)
                            for k in [*range(10, 20), *range(-5, 0)]]

                async def ignored() -> int:
                    n = journal_rows(settings, "SELECT count(*) FROM events WHERE kind='abort_ignored'")[0][0]
                    return n if n >= len(invented) else 0

                await until(ignored, "every invented cycle's abort to be ignored")
                snap = await snapshot(js["operator"])
                aborted = journal_rows(settings, "SELECT cycle_id FROM snapshots WHERE status='aborted'")
                return {"genuine": genuine, "points": (points, len(snap.equity_history)), "aborted": aborted,
                        "last": snap.cycle_id}

        out = asyncio.run(scenario())
    assert out["aborted"] == [(out["genuine"],)], out["aborted"]
    assert out["points"][1] == out["points"][0] + 1, f"equity points {out['points']}: one cycle closed, one point"
    assert out["last"] == out["genuine"]


def test_a_flood_of_aborts_naming_a_refused_notice_costs_the_exchange_one_clock_read(
        nats_server: Any, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compromised ingest announces one bar far ahead (refused by the venue's clock), then aborts it 60 times.
    Each abort read the venue's clock, a rate-limited request, while plans (stop-loss exits too) waited behind them
    on the executor's one-at-a-time consumer.  One read serves a minute of aborts; none becomes an equity point."""
    with live_venue(shared_data_dir, monkeypatch) as sim:
        settings = live_settings(nats_server, sim)

        async def scenario() -> tuple[int, int]:
            async with running(settings, "executor") as services, \
                    role_connections(settings, "ingest", "operator") as js:
                health = services["executor"].health
                now = int(sim.sim.now_ms())
                ahead = now - now % DAY + 30 * DAY
                cycle_id = cycle_id_for("1d", ahead)
                ready = DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=ahead, digest="0" * 64,
                                  symbols=["BTC/USDT"], bars=1, markets=[])
                await publish(js["ingest"], ready, msg_id=f"r-{cycle_id}")
                await snapshot(js["operator"])
                before = sim.sim.faults.counts().get("GET /api/v3/time", 0)
                for n in range(60):
                    await publish(js["ingest"], CycleAborted(cycle_id=cycle_id, stage="ingest", reason=f"flood {n}"),
                                  msg_id=f"a-{cycle_id}-{n}")

                async def ignored() -> bool:
                    return health.counters.get("aborts_ignored", 0) >= 60

                await until(ignored, "the 60 aborts to be ignored")
                reads = sim.sim.faults.counts().get("GET /api/v3/time", 0) - before
                aborted = journal_rows(settings, "SELECT count(*) FROM snapshots WHERE status='aborted'")[0][0]
                return reads, aborted

        reads, aborted = asyncio.run(scenario())
    assert aborted == 0
    assert reads <= 2, f"{reads} clock reads for 60 aborts"


def test_a_venue_clock_that_runs_ahead_of_ours_is_read_again_for_each_new_notice(
        nats_server: Any, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rehearsal's venue runs thousands of times faster than the host (a daily bar every few seconds): a venue
    clock read once and carried on by ours for a minute dated its next bars days 'ahead', and their aborts were
    ignored, the cycles never closed.  Only a refusal is remembered; each new notice is judged on a fresh read."""
    with live_venue(shared_data_dir, monkeypatch) as sim:
        settings = live_settings(nats_server, sim)

        async def scenario() -> list[tuple[Any, ...]]:
            async with running(settings, "executor"), role_connections(settings, "ingest", "operator") as js:
                for step in range(3):
                    if step:
                        sim.sim.advance(3)  # three market days pass in an instant of ours
                    now = int(sim.sim.now_ms())
                    cycle_id = await announce_and_abort(js["ingest"], now - now % DAY - DAY)

                    async def closed(cycle_id: str = cycle_id) -> bool:
                        return (await snapshot(js["operator"])).cycle_id == cycle_id

                    await until(closed, f"the abort of {cycle_id} to close its cycle")
                return journal_rows(settings, "SELECT cycle_id FROM snapshots WHERE status='aborted'")

        aborted = asyncio.run(scenario())
    assert len(aborted) == 3, aborted
