"""The ingest service loop: cursor and publications around stale steps, with NATS replaced by recorders."""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aura.strategy.types import Panel
from services.ingest import service
from services.ingest.replay import ReplayStep
from shared.config import load_settings
from shared.contracts import CycleAborted, DataReady, DataStale, PortfolioSnapshot, encode
from shared.health import HealthState

BAR = 1_733_356_800_000  # 2024-12-05 00:00 UTC
CYCLE = "1d-20241205T0000"


class ScriptedSource:
    """Gives the scripted steps one per poll, then stops the service; ``done`` as SyncSource's contract."""

    def __init__(self, steps: list[ReplayStep | None], stop: asyncio.Event) -> None:
        self.steps = steps
        self.stop = stop
        self.done_calls: list[str] = []

    exhausted = False

    def describe(self) -> str:
        return "scripted"

    async def next_step(self) -> ReplayStep | None:
        if not self.steps:
            self.stop.set()
            return None
        return self.steps.pop(0)

    def done(self, step: ReplayStep) -> bool:
        self.done_calls.append(step.cycle_id)
        return step.snapshot is not None


class Recorder:
    """NATS stand-ins: every publication is recorded; the executor ends each cycle it is sent."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []
        self.kv_puts: list[tuple[str, bytes]] = []
        self.on_snapshot: Any = None

    async def subscribe(self, subject: str, cb: Any) -> None:
        assert subject == PortfolioSnapshot.SUBJECT
        self.on_snapshot = cb

    async def publish(self, js: object, msg: Any, msg_id: str) -> None:
        self.published.append((msg_id, msg))
        if isinstance(msg, CycleAborted | DataReady):  # what the executor's journal does, in one step
            snap = PortfolioSnapshot(snapshot_id=f"s{len(self.published)}", cycle_id=msg.cycle_id, plan_id="",
                                     status="aborted" if isinstance(msg, CycleAborted) else "executed", cash=1.0,
                                     holdings={}, entry_prices={}, equity=1.0, equity_history=[])
            await self.on_snapshot(types.SimpleNamespace(data=encode(snap)))

    async def put(self, key: str, value: bytes) -> None:
        self.kv_puts.append((key, value))


def _panel() -> Panel:
    one = np.ones((1, 1))
    return Panel(("BTC/USDT",), np.array([BAR], dtype=np.int64), one, one, one, one, one)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[ReplayStep | None]) -> tuple[Recorder,
                                                                                                   ScriptedSource]:
    rec = Recorder()
    stop = asyncio.Event()
    src = ScriptedSource(steps, stop)

    async def store(js: object) -> Any:
        async def put(name: str, blob: bytes) -> None:
            return None

        return types.SimpleNamespace(put=put)

    async def kv(js: object) -> Recorder:
        return rec

    async def kv_get(kv: object, key: str) -> tuple[None, int]:
        return None, 0

    monkeypatch.setattr(service, "candle_writer", store)
    monkeypatch.setattr(service, "state_kv", kv)
    monkeypatch.setattr(service, "kv_get", kv_get)
    monkeypatch.setattr(service, "publish", rec.publish)
    monkeypatch.setattr(service, "SyncSource", lambda *a, **k: src)
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_INGEST_SOURCE": "sync", "AURA_SYMBOLS": "BTC/USDT",
                              "AURA_INGEST_POLL_S": "0.001", "AURA_CYCLE_TIMEOUT_S": "2"})
    ctx = types.SimpleNamespace(name="ingest", settings=settings, logger=logging.getLogger("t.ingest"),
                                nc=types.SimpleNamespace(subscribe=rec.subscribe), js=object(),
                                health=HealthState("ingest"), stop=stop)
    asyncio.run(asyncio.wait_for(service.run(ctx), 10))  # type: ignore[arg-type]
    return rec, src


def test_stale_bar_keeps_the_cursor_and_is_published_once_complete(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stale = ReplayStep(-1, BAR, CYCLE, None, ("BTC/USDT",))
    complete = ReplayStep(0, BAR, CYCLE, _panel(), ())
    rec, src = _run(tmp_path, monkeypatch, [stale, stale, complete])
    kinds = [type(m).__name__ for _, m in rec.published]
    # One abort ends the cycle in the journal; the second stale poll of the same bar adds nothing to it.
    assert kinds == ["DataStale", "CycleAborted", "DataReady"]
    assert all(m.cycle_id == CYCLE for _, m in rec.published)
    assert len({msg_id for msg_id, _ in rec.published}) == 3
    assert src.done_calls == [CYCLE, CYCLE]
    # The cursor moved only when the bar was really done.
    assert rec.kv_puts == [("ingest.cursor.sync.1d", str(BAR).encode())]
    assert isinstance(rec.published[0][1], DataStale)
    assert rec.published[0][1].as_of_ms == BAR  # risk refuses targets on data older than this bar


def test_replay_source_moves_past_a_stale_bar(tmp_path: Path) -> None:
    from services.ingest.sources import ReplaySource

    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_SNAPSHOT_BARS": "60"})
    src = ReplaySource(settings, None, logging.getLogger("t"))
    start = src.index
    # A hole in bundled history never fills: waiting for it would stall the replay for good.
    assert src.done(ReplayStep(start, 0, "x", None, ("BTC/USDT",))) is True
    assert src.index == start + 1
