"""The ingest service loop: cursor and publications around stale steps, with NATS replaced by recorders."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import types
from decimal import Decimal
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
from tests.ingest.conftest import NOW, Face, top_by_volume

BAR = 1_733_356_800_000  # 2024-12-05 00:00 UTC
CYCLE = "1d-20241205T0000"


class ScriptedSource:
    """Gives the scripted steps one per poll, then stops the service; ``done`` as SyncSource's contract."""

    def __init__(self, steps: list[ReplayStep | Exception | None], stop: asyncio.Event) -> None:
        self.steps = steps
        self.stop = stop
        self.done_calls: list[str] = []
        self.held: set[str] = set()  # what the service tells a sync source the portfolio holds

    exhausted = False

    def describe(self) -> str:
        return "scripted"

    def readiness(self, patience_s: float) -> tuple[bool, str]:
        return True, "scripted"

    def universe_detail(self) -> str:
        return "scripted universe"

    async def next_step(self) -> ReplayStep | None:
        if not self.steps:
            self.stop.set()
            return None
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step  # a poll that breaks (the cache's disk full, a provider bug)
        return step

    def done(self, step: ReplayStep) -> bool:
        self.done_calls.append(step.cycle_id)
        return step.snapshot is not None


class Recorder:
    """NATS stand-ins: every publication is recorded; the executor ends each cycle it is sent."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []
        self.kv_puts: list[tuple[str, bytes]] = []
        self.on_snapshot: Any = None
        self.holdings: dict[str, float] = {}  # what the executor's snapshots say the portfolio holds

    async def subscribe(self, subject: str, cb: Any) -> None:
        assert subject == PortfolioSnapshot.SUBJECT
        self.on_snapshot = cb

    async def publish(self, js: object, msg: Any, msg_id: str) -> None:
        self.published.append((msg_id, msg))
        if isinstance(msg, CycleAborted | DataReady):  # what the executor's journal does, in one step
            snap = PortfolioSnapshot(snapshot_id=f"s{len(self.published)}", cycle_id=msg.cycle_id, plan_id="",
                                     status="aborted" if isinstance(msg, CycleAborted) else "executed", cash=1.0,
                                     holdings=dict(self.holdings), entry_prices={}, equity=1.0, equity_history=[])
            await self.on_snapshot(types.SimpleNamespace(subject=PortfolioSnapshot.SUBJECT, data=encode(snap)))

    async def put(self, key: str, value: bytes) -> None:
        self.kv_puts.append((key, value))


def _panel() -> Panel:
    one = np.ones((1, 1))
    return Panel(("BTC/USDT",), np.array([BAR], dtype=np.int64), one, one, one, one, one)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[ReplayStep | Exception | None],
         rec: Recorder | None = None, health: HealthState | None = None) -> tuple[Recorder, ScriptedSource]:
    rec = rec or Recorder()
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
                                health=health or HealthState("ingest"), stop=stop)
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


class FlakyBus(Recorder):
    """The bus times out on the first publish, as a JetStream publish does when the server is busy."""

    async def publish(self, js: object, msg: Any, msg_id: str) -> None:
        if not getattr(self, "failed", False):
            self.failed = True
            raise TimeoutError("nats: timeout")
        await super().publish(js, msg, msg_id)


def test_a_poll_that_raises_is_logged_and_retried_not_the_end_of_ingest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A full disk under the cache, then a publish that times out: each used to end the process (a crash loop
    under a supervisor).  Each poll is now lost alone, said with a tagged line and counted; the same bar is
    published at the next poll and the cursor moves only then."""
    complete = ReplayStep(0, BAR, CYCLE, _panel(), ())
    health = HealthState("ingest")
    with caplog.at_level(logging.ERROR, logger="t.ingest"):
        rec, _ = _run(tmp_path, monkeypatch, [OSError(28, "No space left on device"), complete, complete],
                      rec=FlakyBus(), health=health)
    errors = [r for r in caplog.records if getattr(r, "tag", None) == "INGEST_ERROR"]
    assert [r.fields["error"] for r in errors] == [  # type: ignore[attr-defined]
        "OSError: [Errno 28] No space left on device", "TimeoutError: nats: timeout"]
    assert all(r.exc_info for r in errors)  # the traceback is in the log line
    assert [type(m).__name__ for _, m in rec.published] == ["DataReady"]
    assert rec.kv_puts == [("ingest.cursor.sync.1d", str(BAR).encode())]
    assert 'aura_poll_errors_total{service="ingest"} 2.0' in health.exposition()[0].decode()
    assert health.readiness()[1]["polls"] == "ok"  # the last poll worked


def test_failing_polls_turn_readiness_red_after_the_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"t": 100.0}
    monkeypatch.setattr(service.time, "monotonic", lambda: clock["t"])
    failing = service.FailingPolls()
    assert failing.readiness(120.0) == (True, "ok")
    failing.note(OSError("disk"))
    clock["t"] += 60
    failing.note(TimeoutError("bus"))
    assert failing.readiness(120.0)[0]  # a minute of trouble: not yet
    clock["t"] += 61
    ok, why = failing.readiness(120.0)
    assert not ok and why == "polls failing for 121s: TimeoutError: bus"
    failing.clear()
    assert failing.readiness(120.0) == (True, "ok")


def test_replay_source_moves_past_a_stale_bar(tmp_path: Path) -> None:
    from services.ingest.sources import ReplaySource

    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_SNAPSHOT_BARS": "60"})
    src = ReplaySource(settings, None, logging.getLogger("t"))
    start = src.index
    # A hole in bundled history never fills: waiting for it would stall the replay for good.
    assert src.done(ReplayStep(start, 0, "x", None, ("BTC/USDT",))) is True
    assert src.index == start + 1


# --- the real sync source against the venue simulator, NATS replaced by recorders -------------------------------


@pytest.mark.integration
def test_sync_cycles_carry_the_venues_rules_and_universe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         venue: Any, api: Face,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Unreadable rules: a stale cycle.  Then each DataReady carries the venue's rules of that moment (BTC's lot
    step changed on the venue between two cycles) for the screened universe plus a held pair still trading;
    a held pair the venue halted is reported, never in the data."""
    day = 86_400_000
    venue.sim.set_now(NOW - day + 300_000)  # the 2024-12-04 bar has closed
    for var, value in {"AURA_BINANCE_ARCHIVE_URL": venue.base_url, "AURA_BINANCE_API_URL": venue.base_url,
                       "AURA_COINGECKO_URL": venue.coingecko_url, "AURA_INGEST_CCXT_RATE_LIMIT_MS": "1",
                       "AURA_COINGECKO_MIN_INTERVAL_S": "0"}.items():
        monkeypatch.setenv(var, value)
    api.fault("http_error", "exchangeInfo", status=500)
    rec = Recorder()
    # What the executor's snapshots said before this restart, and say until the first cycle: LINK (screened
    # out, still trading) and MATIC (halted on the venue).
    rec.holdings = {"LINK/USDT": 3.0, "MATIC/USDT": 50.0}
    stop = asyncio.Event()
    health = HealthState("ingest")
    readiness: list[str] = []
    tops: list[set[str]] = []  # the screen computed from the venue's own market at each DataReady

    async def publish(js: object, msg: Any, msg_id: str) -> None:
        if isinstance(msg, DataStale):
            api.clear_faults()  # the venue answers again by the next poll
        if isinstance(msg, DataReady):
            readiness.append(health.readiness()[1]["universe"])
            tops.append(set(top_by_volume(venue, 3)))
            if len(readiness) == 1:
                rec.holdings = {"MATIC/USDT": 50.0}  # the first cycle's plan sold LINK; MATIC cannot be sold
                rules = venue.sim.market.rules
                rules["BTCUSDT"] = dataclasses.replace(rules["BTCUSDT"], step_size=Decimal("0.001"))
                venue.sim.set_now(NOW + 300_000)  # a day on: the next bar closes, the rules are due again
            else:
                stop.set()
        await rec.publish(js, msg, msg_id)

    async def store(js: object) -> Any:
        async def put(name: str, blob: bytes) -> None:
            return None

        return types.SimpleNamespace(put=put)

    async def kv(js: object) -> Recorder:
        return rec

    async def kv_get(kv: object, key: str) -> tuple[bytes | None, int]:
        return (b'["LINK/USDT", "MATIC/USDT"]', 1) if key == "ingest.held.1d" else (None, 0)

    monkeypatch.setattr(service, "candle_writer", store)
    monkeypatch.setattr(service, "state_kv", kv)
    monkeypatch.setattr(service, "kv_get", kv_get)
    monkeypatch.setattr(service, "publish", publish)
    settings = load_settings({"AURA_HOME": str(tmp_path), "AURA_INGEST_SOURCE": "sync", "AURA_UNIVERSE_MAX": "3",
                              "AURA_SNAPSHOT_BARS": "60", "AURA_INGEST_POLL_S": "0.01", "AURA_CYCLE_TIMEOUT_S": "5"})
    ctx = types.SimpleNamespace(name="ingest", settings=settings, logger=logging.getLogger("t.ingest"),
                                nc=types.SimpleNamespace(subscribe=rec.subscribe), js=object(), health=health,
                                stop=stop)
    with caplog.at_level(logging.INFO, logger="t.ingest"):
        asyncio.run(asyncio.wait_for(service.run(ctx), 120))  # type: ignore[arg-type]

    kinds = [type(m).__name__ for _, m in rec.published]
    assert kinds == ["DataStale", "CycleAborted", "DataReady", "DataReady"]
    stale = rec.published[0][1]
    assert stale.cycle_id == "1d-20241204T0000" and stale.reason.startswith("market rules unreadable")
    first, second = rec.published[2][1], rec.published[3][1]
    assert (first.cycle_id, second.cycle_id) == ("1d-20241204T0000", "1d-20241205T0000")
    assert "LINK/USDT" not in tops[0] | tops[1]
    assert set(first.symbols) == tops[0] | {"LINK/USDT"}  # held and trading: kept until sold
    assert set(second.symbols) == tops[1]  # sold: it leaves
    for ready in (first, second):
        assert [m.symbol for m in ready.markets] == sorted(ready.symbols)
    step = {ready.cycle_id: {m.symbol: m.step_size for m in ready.markets} for ready in (first, second)}
    assert step["1d-20241204T0000"]["BTC/USDT"] == 1e-05 and step["1d-20241205T0000"]["BTC/USDT"] == 0.001
    assert all("DELISTED but held: MATIC/USDT" in text for text in readiness)
    delisted = [r for r in caplog.records if getattr(r, "tag", None) == "DELISTED"]
    assert [r.fields["symbol"] for r in delisted] == ["MATIC/USDT"] * 2  # type: ignore[attr-defined]  # once a day
    assert all("MATIC/USDT" not in ready.symbols for ready in (first, second))
    assert ("ingest.held.1d", b'["MATIC/USDT"]') in rec.kv_puts  # for the first cycle after a restart
    assert any(getattr(r, "tag", None) == "MARKETS_STALE" for r in caplog.records)


def test_a_panel_over_the_readers_bound_ends_the_cycle_stale_saying_what_to_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signal and risk refuse a candle object over CANDLE_OBJECT_MAX_BYTES (a long fixed symbol list with many
    bars can make one): announced, every cycle would be dead-lettered by both.  Ingest says so instead."""
    monkeypatch.setattr(service, "CANDLE_OBJECT_MAX_BYTES", 100)  # the one-bar test panel is ~200 bytes
    rec, _ = _run(tmp_path, monkeypatch, [ReplayStep(0, BAR, CYCLE, _panel(), ())])
    assert [type(m).__name__ for _, m in rec.published] == ["DataStale", "CycleAborted"], rec.published
    stale = rec.published[0][1]
    assert "is over the 100 a reader accepts: lower AURA_SNAPSHOT_BARS" in stale.reason, stale
    # The bar is over, as a hole in bundled history is: asking for it again cannot make the panel smaller.
    assert rec.kv_puts == [("ingest.cursor.sync.1d", str(BAR).encode())]
