"""`aura status`, `aura trades` and `aura pnl --daily` against real parts: a journal written through the
executor's own journal and snapshot code, a secured nats-server written to by each role with its own
credential and key, and a real health app answering /readyz.

Every figure asserted is worked out by hand from the fills below; the journal must come out byte for byte
unchanged (every reader opens it read-only).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from aura.cli import main
from aura.strategy.params import StrategyParams
from aura.strategy.types import Panel
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis, write_snapshot
from services.ingest.replay import load_market_rules
from services.risk.latch import LatchDoc, read_latch, write_latch
from shared.bus import publish
from shared.config import DEFAULT_HEALTH_PORTS, SERVICE_NAMES, Settings, load_settings
from shared.contracts import PortfolioSnapshot, TargetPortfolio
from shared.credentials import signing_key
from shared.health import HealthState, start_health_server, stop_health_server
from shared.live_params import promote, sign_document
from shared.runfile import RunInfo, acquire_home, write_run
from shared.signing import sign_struct
from tests.bus_helpers import announce_panel, executor_signed, market_msgs, publish_buy, role_connections
from tests.conftest import NatsEndpoint
from tests.fake_occupant import free_ports, occupants

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
INITIAL = 10_000.0
BTC, ETH = "BTC/USDT", "ETH/USDT"
# The cycles the journal holds: (cycle id, plan gate, legs (symbol, side, qty, price, fee_base, fee_quote, reason),
# the marks the executor valued the books at).  Fills are at the cycle's bar close + 5 s.
CYCLES = [
    ("1d-20240101T0000", "pass", [(BTC, "buy", 0.1, 40_000.0, 0.0, 4.0, "enter"),
                                  (ETH, "buy", 1.0, 2_000.0, 0.001, 0.0, "enter")], {BTC: 40_000.0, ETH: 2_000.0}),
    ("1d-20240102T0000", "pass", [(BTC, "sell", 0.1, 42_000.0, 0.0, 4.2, "take_profit")], {ETH: 2_100.0}),
    ("1d-20240103T0000", "pass", [(BTC, "buy", 0.05, 41_000.0, 0.0, 2.05, "enter")], {BTC: 41_000.0, ETH: 2_050.0}),
    ("1d-20240104T0000", "hold", [], {BTC: 42_000.0, ETH: 1_950.0}),
]
# By hand: cash 10000 - 4004 - 2000 + 4195.8 - 2052.05; ETH's fee was taken from the coins.
CASH = 6_139.75
HOLDINGS = {BTC: 0.05, ETH: 0.999}
EQUITY = [10_000.0, 9_994.0, 10_289.7, 10_237.7, 10_187.8]  # genesis, then each cycle at its marks
BTC_TRIP_PNL = (0.1 * 42_000.0 - 4.2) - (0.1 * 40_000.0 + 4.0)  # 191.8
PRICES = {BTC: 43_000.0, ETH: 1_900.0}  # the newest closes ingest announces on the bus
STOP_LOSS = 0.1  # the parameter version the operator promotes


def write_journal(path: Path) -> None:
    """The journal as the executor leaves it after CYCLES: plans, intents, fills, snapshots."""
    journal = Journal(path)
    ensure_genesis(journal, INITIAL)
    for n, (cycle_id, gate, legs, marks) in enumerate(CYCLES):
        plan_id = f"p-{n}"
        body = {"plan_id": plan_id, "cycle_id": cycle_id, "gate": gate,
                "legs": [{"index": i, "symbol": s, "side": side, "qty": q, "ref_price": px, "reason": why}
                         for i, (s, side, q, px, _, _, why) in enumerate(legs)]}
        journal.begin()
        journal.record_plan(plan_id, cycle_id, gate, 1, "basis", json.dumps(body), [f"gate {gate}"])
        for i, (symbol, side, qty, price, fee_base, fee_quote, _) in enumerate(legs):
            cid = f"{plan_id}-{i}"
            journal.record_intent(cid, cycle_id, plan_id, i, symbol, side, qty, price, status="filled")
            journal.record_fill(f"t{n}{i}", cycle_id, cid, symbol, side, qty, price, fee_quote + fee_base * price,
                                T0 + (n + 1) * DAY + 5_000, fee_base=fee_base, fee_quote=fee_quote)
        journal.set_plan_status(plan_id, "executed")
        write_snapshot(journal, cycle_id, plan_id, "executed", marks)
        journal.commit()
    journal.close()


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture()
def read_only_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every database the commands open; the journal must only ever be opened with mode=ro."""
    opened: list[str] = []
    real = sqlite3.connect

    def spy(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    return opened


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- a running system, as far as status reads it -------------------------------------------------------------------


class HealthThread:
    """Real health apps (shared.health) for two services on their configured ports, in a loop of their own:
    risk ready, signal answering 503 (bus down); the others do not answer at all."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        states = [HealthState(service="risk", bus_connected=True), HealthState(service="signal")]
        self.servers = [asyncio.run_coroutine_threadsafe(
            start_health_server(s, "127.0.0.1", settings.port_for(s.service)), self.loop).result(10) for s in states]

    def close(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(stop_health_server(server), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def populate_bus(settings: Settings) -> None:
    """Each role writes what it alone may: ingest the newest closes, signal a regime, risk a signed plan and a
    latched kill-switch, the operator a parameter version."""
    async with role_connections(settings, "ingest", "signal", "risk", "operator") as js:
        rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
        closes = np.array([[42_000.0, 1_950.0], [PRICES[BTC], PRICES[ETH]]])
        panel = Panel((BTC, ETH), np.array([T0 + 3 * DAY, T0 + 4 * DAY], dtype=np.int64), closes, closes, closes,
                      closes, np.ones_like(closes))
        await announce_panel(js["ingest"], panel, "1d-20240105T0000", market_msgs((BTC, ETH), rules))
        await publish(js["signal"], TargetPortfolio(
            target_id="t-5", cycle_id="1d-20240105T0000", as_of_ms=T0 + 4 * DAY, data_digest="d", params_version=1,
            params_digest="p", regime="bear", weights={}, prices={}, markets=[]), msg_id="t-5")
        await publish_buy(js["risk"], settings, "1d-20240105T0000", "basis", qty=0.01, price=PRICES[BTC])
        risk_key = signing_key(settings.keys, "risk")
        revision = (await read_latch(js["risk"], risk_key.public_key()))[1]
        await write_latch(js["risk"], LatchDoc(halted=True, cycle_id="1d-20240105T0000", drawdown=0.31,
                                               reason="drawdown 31% >= 30%"), risk_key, revision)
        operator_key = signing_key(settings.keys, "operator")
        doc = sign_document(StrategyParams(stop_loss=STOP_LOSS), operator_key, "operator:test", "tighter stop")
        await promote(js["operator"], doc, operator_key)


@pytest.fixture()
def system(nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, NatsEndpoint]]:
    env = nats_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env)
    write_journal(settings.journal_path)
    asyncio.run(populate_bus(settings))
    health = HealthThread(settings)
    try:
        yield settings, nats_server
    finally:
        health.close()


def test_status_shows_the_journals_books_priced_from_the_bus(system: tuple[Settings, NatsEndpoint],
                                                           read_only_spy: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = system
    before = fingerprint(settings.journal_path)
    code, out, err = cli(capsys, "status", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["bus"] == {"reachable": True, "why": ""}
    services = report["services"]
    assert services["risk"]["status"] == "ready" and services["risk"]["ready"] is True
    assert services["signal"]["status"] == "not ready" and "bus: disconnected" in services["signal"]["detail"]
    assert {n for n, s in services.items() if s["status"] == "down"} == {"ingest", "executor", "optimizer", "console"}
    assert report["params"]["version"] == 1 and report["params"]["stop_loss"] == STOP_LOSS
    assert report["params"]["reason"] == "tighter stop" and report["unverified_skipped"] == 0
    assert report["regime"] == "bear"
    assert report["latch"]["halted"] is True and report["latch"]["drawdown"] == 0.31

    book = report["portfolio"]
    assert book["source"] == "journal" and book["cycle_id"] == CYCLES[-1][0]
    assert book["cash"] == pytest.approx(CASH) and book["equity"] == pytest.approx(EQUITY[-1])
    assert book["peak"] == pytest.approx(max(EQUITY))
    assert book["drawdown"] == pytest.approx(EQUITY[-1] / max(EQUITY) - 1)
    positions = {p["symbol"]: p for p in book["positions"]}
    assert {s: p["qty"] for s, p in positions.items()} == pytest.approx(HOLDINGS)
    assert positions[BTC]["entry"] == pytest.approx(41_000.0) and positions[ETH]["entry"] == pytest.approx(2_000.0)
    assert {s: p["price"] for s, p in positions.items()} == PRICES
    assert positions[BTC]["pnl"] == pytest.approx((43_000.0 - 41_000.0) * 0.05)  # +100
    assert positions[ETH]["pnl"] == pytest.approx((1_900.0 - 2_000.0) * 0.999)  # -99.9
    assert positions[BTC]["stop"] == pytest.approx(41_000.0 * 0.9) and positions[ETH]["stop"] == pytest.approx(1_800)
    assert book["equity_marked_now"] == pytest.approx(CASH + 0.05 * 43_000.0 + 0.999 * 1_900.0)
    # The recent cycles: risk's signed plan, from the bus.
    assert [(c["cycle_id"], c["gate"], c["source"]) for c in report["cycles"]] == [
        ("1d-20240105T0000", "pass", "bus")]
    assert report["cycles"][0]["legs"] == [f"buy 0.01 {BTC}"]

    code, out, err = cli(capsys, "status")
    assert code == 0 and err == ""
    for text in ("reachable", "v1 by operator:test", "bear", "LATCHED", "0.999", "41000", "36900", "+100.00",
                 "-99.90", "1d-20240105T0000", "not ready"):
        assert text in out, text
    assert fingerprint(settings.journal_path) == before
    journal_opens = [d for d in read_only_spy if "journal.sqlite" in d]
    assert journal_opens and all(d.startswith("file:") and d.endswith("?mode=ro") for d in journal_opens)


def test_status_names_a_version_counted_in_other_bars_and_keeps_the_one_in_force(
        system: tuple[Settings, NatsEndpoint], capsys: pytest.CaptureFixture[str]) -> None:
    """An hourly document promoted onto this daily system is refused by signal and risk ([TIMEFRAME]); status
    shows the version they keep (the newest valid one for 1d bars) and names the refusal."""
    settings, _ = system

    async def promote_hourly() -> int:
        async with role_connections(settings, "operator") as js:
            key = signing_key(settings.keys, "operator")
            doc = sign_document(StrategyParams(stop_loss=0.2), key, "operator:test", "hourly set",
                                record={"timeframe": "1h"})
            return await promote(js["operator"], doc, key)

    hourly = asyncio.run(promote_hourly())
    code, out, err = cli(capsys, "status", "--json")
    assert code == 0, err
    params = json.loads(out)["params"]
    assert params["version"] == 1 and params["stop_loss"] == STOP_LOSS and params["reason"] == "tighter stop"
    assert "1h" in params["refused"]
    assert [(h["version"], h["timeframe"]) for h in params["history"]] == [(hourly, "1h"), (1, "1d")]
    code, out, err = cli(capsys, "status")
    assert code == 0 and "NEWEST REFUSED" in out and "v1 by operator:test" in out


def test_status_with_the_bus_down_says_so_in_one_line_and_shows_the_journal(
        system: tuple[Settings, NatsEndpoint], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings, server = system
    before = fingerprint(settings.journal_path)
    server.stop()
    code, out, err = cli(capsys, "status", "--json")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("aura status: cannot reach the AURA bus at") and "showing the journal" in err
    report = json.loads(out)
    assert report["bus"]["reachable"] is False and report["params"] is None and report["latch"] is None
    book = report["portfolio"]
    assert {p["symbol"]: p["qty"] for p in book["positions"]} == pytest.approx(HOLDINGS)
    assert all(p["price"] is None and p["pnl"] is None and p["stop"] is None for p in book["positions"])
    # Without the bus the cycles are the journal's, newest first, each with the gate risk decided.
    assert [(c["cycle_id"], c["gate"], c["outcome"], c["source"]) for c in report["cycles"]] == [
        (cycle_id, gate, "executed", "journal") for cycle_id, gate, _, _ in reversed(CYCLES)]
    assert report["cycles"][1]["legs"] == [f"buy 0.05 {BTC}"]

    code, out, err = cli(capsys, "status")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert "not readable" in out and "0.999" in out and "1d-20240104T0000" in out
    assert fingerprint(settings.journal_path) == before


def test_status_on_a_home_without_a_system_shows_no_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """No `aura up` on this AURA_HOME: one line says so, and no service is shown, although something answers
    200 on every default health port (another system's, here strangers), which status must not even ask."""
    for key in [k for k in os.environ if k.startswith("AURA_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AURA_HOME", str(tmp_path / "empty"))
    with occupants(DEFAULT_HEALTH_PORTS) as fakes:
        code, out, err = cli(capsys, "status", "--json")
        screen_code, screen, screen_err = cli(capsys, "status")
        asked = {n: f.requests for n, f in fakes.items()}
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"no AURA system is running on AURA_HOME={(tmp_path / 'empty').resolve()}" in err, err
    report = json.loads(out)
    assert report["services"] == {}, report["services"]
    assert screen_code == 1 and screen_err == err
    assert "ready" not in screen and "down" not in screen, screen
    assert asked == dict.fromkeys(asked, 0), f"status asked the strangers: {asked}"


def test_status_believes_only_the_answers_of_its_own_run(nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The run file of the `aura up` on this home names each service's port and the run's id: a service that
    answers with that id is shown; another process on a recorded port (here a ready risk of another run, after
    ours died and its port was taken) is not shown as ours."""
    env = nats_server.env()
    for key in [k for k in os.environ if k.startswith("AURA_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AURA_HOME", env["AURA_HOME"])  # the bus comes from the run file, like after `aura up`
    ports = free_ports(SERVICE_NAMES)
    lock = acquire_home(nats_server.home)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    apps = {"signal": HealthState(service="signal", bus_connected=True, run_id="this-run"),
            "risk": HealthState(service="risk", bus_connected=True, run_id="another-run")}
    servers = [asyncio.run_coroutine_threadsafe(start_health_server(state, "127.0.0.1", ports[name]), loop).result(10)
               for name, state in apps.items()]
    try:
        write_run(nats_server.home.resolve(), RunInfo(nats_server.url, os.getpid(), {
            n: f"http://127.0.0.1:{p}/readyz" for n, p in ports.items()}, 0, run_id="this-run"))
        code, out, err = cli(capsys, "status", "--json")
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(stop_health_server(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        lock.close()
    assert code == 0, err
    services = json.loads(out)["services"]
    assert services["signal"]["ready"] is True and services["signal"]["url"].endswith(f":{ports['signal']}/readyz")
    assert services["risk"]["ready"] is False and services["risk"]["status"] == "down", services["risk"]
    assert "another process" in services["risk"]["detail"], services["risk"]
    assert {n for n, s in services.items() if s["status"] == "down"} == set(SERVICE_NAMES) - {"signal"}


def test_without_the_journal_status_shows_the_executors_signed_snapshot_from_the_bus(
        nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Compose: the journal is the executor's alone; the books come from its signed snapshot on the bus, and a
    snapshot that does not verify (here signed with risk's key) is skipped and counted."""
    env = nats_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env)

    async def executor_publishes() -> None:
        async with role_connections(settings, "executor") as js:
            genuine = PortfolioSnapshot(snapshot_id="s-1", cycle_id=CYCLES[-1][0], plan_id="p-3", status="executed",
                                        cash=CASH, holdings=HOLDINGS, entry_prices={BTC: 41_000.0, ETH: 2_000.0},
                                        equity=EQUITY[-1], equity_history=EQUITY, committed_at_ms=T0 + 5 * DAY)
            await publish(js["executor"], executor_signed(settings, genuine), msg_id="s-1")
            forged = msgspec.structs.replace(genuine, snapshot_id="s-2", holdings={BTC: 9.0}, signature="", key_id="")
            await publish(js["executor"], sign_struct(forged, signing_key(settings.keys, "risk")), msg_id="s-2")

    asyncio.run(executor_publishes())
    code, out, err = cli(capsys, "status", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["journal"]["visible"] is False and "no journal at" in report["journal"]["why"]
    book = report["portfolio"]
    assert book["source"].startswith("bus") and book["equity"] == EQUITY[-1] and book["cash"] == CASH
    assert {p["symbol"]: p["qty"] for p in book["positions"]} == HOLDINGS
    assert book["drawdown"] == pytest.approx(EQUITY[-1] / max(EQUITY) - 1)
    assert report["unverified_skipped"] == 1
    assert not settings.journal_path.exists()


# --- journal only: trades and daily P&L ------------------------------------------------------------------------------


@pytest.fixture()
def journal_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AURA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AURA_NATS_URL", raising=False)
    settings = load_settings({"AURA_HOME": str(tmp_path / "home")})
    write_journal(settings.journal_path)
    return settings


def test_trades_are_the_journals_round_trips(journal_home: Settings, read_only_spy: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(journal_home.journal_path)
    code, out, err = cli(capsys, "trades", "--json")
    assert code == 0, err
    doc = json.loads(out)
    trips = doc["trips"]
    assert [(t["symbol"], t["open"]) for t in trips] == [(BTC, False), (BTC, True), (ETH, True)]
    closed = trips[0]
    assert closed["pnl"] == pytest.approx(BTC_TRIP_PNL) and closed["pnl"] == pytest.approx(191.8)
    assert closed["qty"] == pytest.approx(0.1) and closed["entry_price"] == pytest.approx(40_000.0)
    assert closed["exit_price"] == pytest.approx(42_000.0) and closed["exit_reason"] == "take_profit"
    # Times are the bars the cycles traded (the fills' own stamps are the bar's close + 5 s here).
    assert closed["holding_ms"] == DAY and closed["entry_time"] == T0 and closed["exit_time"] == T0 + DAY
    # ETH's fee came out of the coins: the trip holds what the books hold, bought at the price paid.
    eth = trips[2]
    assert eth["qty"] == pytest.approx(HOLDINGS[ETH]) and eth["entry_price"] == pytest.approx(2_000.0)
    assert eth["cost"] == pytest.approx(2_000.0) and eth["pnl"] is None and eth["exit_time"] is None
    assert trips[1]["qty"] == pytest.approx(0.05) and trips[1]["entry_price"] == pytest.approx(41_000.0)
    assert doc["summary"]["closed"] == 1 and doc["summary"]["open"] == 2
    assert doc["summary"]["realized_pnl"] == pytest.approx(191.8) and doc["summary"]["win_rate"] == 1.0

    code, out, _ = cli(capsys, "trades")
    assert code == 0 and "+191.80" in out and "take_profit" in out and "1d 0h" in out and out.count("open") >= 2
    assert fingerprint(journal_home.journal_path) == before
    assert all(d.endswith("?mode=ro") for d in read_only_spy if "journal.sqlite" in d)


def test_daily_pnl_rows_add_up_to_the_equity_change(journal_home: Settings,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(journal_home.journal_path)
    code, out, err = cli(capsys, "pnl", "--daily", "--json")
    assert code == 0, err
    doc = json.loads(out)
    rows = doc["daily"]
    # Each cycle's day is its bar's (by its open, as in the cycle id and `aura status`); the genesis capital
    # starts the first one.
    assert [r["day"] for r in rows] == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert rows[0]["start_equity"] == EQUITY[0] and [r["end_equity"] for r in rows] == pytest.approx(EQUITY[1:])
    assert [r["pnl"] for r in rows] == pytest.approx([-6.0, 295.7, -52.0, -49.9])
    assert [r["cycles"] for r in rows] == [1, 1, 1, 1]
    for prev, row in itertools.pairwise(rows):
        assert row["start_equity"] == prev["end_equity"]
    totals = doc["totals"]
    assert totals["pnl"] == pytest.approx(sum(r["pnl"] for r in rows)) and totals["pnl"] == pytest.approx(187.8)
    assert totals["return"] == pytest.approx(EQUITY[-1] / INITIAL - 1) and totals["cycles"] == 4

    code, out, _ = cli(capsys, "pnl", "--daily")
    assert code == 0 and "2024-01-03" in out and "+295.70" in out and "+187.80" in out
    code, out, _ = cli(capsys, "pnl", "--daily", "--days", "2")
    assert "2024-01-04" in out and "2024-01-03" in out and "2024-01-02" not in out and "+187.80" in out
    assert fingerprint(journal_home.journal_path) == before


def test_without_a_journal_trades_and_pnl_say_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AURA_HOME", str(tmp_path / "empty"))
    for command in (["trades"], ["pnl", "--daily"]):
        code, out, err = cli(capsys, *command)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "no journal at" in err
    assert not (tmp_path / "empty" / "executor" / "journal.sqlite").exists()  # reading created nothing
