"""The journal never silently disagrees with the exchange: the live executor's real body on a real bus, against
the simulator.

The incident: after a kill -9 with nothing checkpointed, deleting journal.sqlite-wal and restarting made the
executor write a new genesis and forget 0.0601 BTC and 0.416 ETH held at the exchange, with /readyz green.
Now an empty journal beside an account with coins, or coins the journal does not know, halts trading
([RECONCILE], /readyz red, every new plan refused) until ``aura journal adopt``; the executor then records the
exchange's balances at its prices as a journaled adoption and trades again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

import services.executor.live  # noqa: F401 - ccxt's import takes seconds; not inside a scenario's event loop
from aura.exchange_sim import SimServer
from services.executor.books import BookDiff, compare_books
from services.executor.journal import Journal
from services.executor.portfolio import portfolio_from_fills
from services.executor.reconciler import ADOPT_SKEW_MS, POLL_S
from services.executor.runner import ensure_genesis, write_snapshot
from shared.bus import publish, state_kv
from shared.contracts import CycleAborted, DataReady, PortfolioSnapshot
from shared.credentials import signing_key
from shared.cycles import cycle_id_for
from shared.operator_requests import ADOPT_KEY, operator_request, write_request
from tests.bus_helpers import (
    Capture,
    dead_letters,
    journal_rows,
    publish_buy,
    role_connections,
    running,
    snapshot,
    until,
)
from tests.conftest import NatsEndpoint
from tests.executor_live.live_service import closed_by, live_settings, publish_plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
DAY = 86_400_000


# --- the comparison itself (pure) ------------------------------------------------------------------------------


def fresh_bar(sim: Any) -> str:
    """The id of the bar the simulator's clock closed last: a plan on it is fresh by the exchange's clock."""
    return cycle_id_for("1d", int(sim.sim.now_ms()) // DAY * DAY - DAY)


def test_compare_books_finds_both_directions_beyond_dust() -> None:
    prices = {"BTC": 40_000.0, "ETH": 2_000.0, "DOGE": 0.1}
    journal = {"USDT": 1_000.0, "BTC": 0.05}
    exchange = {"USDT": 5_000.0, "BTC": 0.0, "ETH": 0.5, "DOGE": 10.0, "XYZ": 3.0}
    diff = compare_books(journal, exchange, prices, dust_quote=5.0)
    assert diff.surplus == {"ETH": 0.5}  # DOGE: 1 USDT of dust; USDT above the journal: the capital cap
    assert diff.shortfall == {"BTC": 0.05}
    assert diff.unpriced == ("XYZ",)
    assert compare_books({"USDT": 10.0}, {"USDT": 10.0}, prices, 5.0) == BookDiff()
    assert compare_books({"USDT": 100.0}, {"USDT": 50.0}, prices, 5.0).shortfall == {"USDT": 50.0}


def test_a_coin_without_a_price_is_never_left_out_of_the_comparison() -> None:
    """The exchange gives no USDT price: the difference cannot be valued, so it is never dropped as dust.  A
    coin only the exchange holds is reported (not a halt: it is no part of equity and may be an airdrop); a
    coin the journal holds at another quantity than the exchange's halts trading."""
    unknown = compare_books({"USDT": 100.0}, {"USDT": 100.0, "LUNA": 5000.0}, {}, 5.0)
    assert unknown.unpriced_unknown == {"LUNA": (0.0, 5000.0)} and unknown.unpriced_held == {}
    assert unknown.clean, "a coin the journal does not hold and nobody can price halted trading"
    held = compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 5000.0}, {}, 5.0)
    assert held.unpriced_held == {"LUNA": (10.0, 5000.0)} and not held.clean
    assert "LUNA journal 10 vs exchange 5000 (no USDT price)" in held.describe()
    short = compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 2.0}, {}, 5.0)
    assert not short.clean and short.unpriced_held == {"LUNA": (10.0, 2.0)}
    same = compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 10.0}, {}, 5.0)
    assert same == BookDiff()
    # A coin the journal holds whose ticker quotes nothing at the moment is valued at the journal's own price: a
    # dust difference is no disagreement, a real one still is.
    assert compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 11.0}, {}, 5.0).unpriced_held
    assert compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 11.0}, {}, 5.0,
                         marks={"LUNA": 0.01}).clean
    marked = compare_books({"USDT": 100.0, "LUNA": 10.0}, {"USDT": 100.0, "LUNA": 2.0}, {}, 5.0, marks={"LUNA": 4.0})
    assert not marked.clean and marked.shortfall == {"LUNA": pytest.approx(8.0)}


def test_an_adoption_changes_holdings_and_never_the_cash_it_did_not_name() -> None:
    fills = [("BTC/USDT", "buy", 0.1, 40_000.0, 0.0, 4.0), ("ETH/USDT", "adopt", 0.5, 2_000.0, 0.0, 0.0),
             ("BTC/USDT", "adopt", -0.04, 41_000.0, 0.0, 0.0), ("USDT", "adopt", -100.0, 1.0, 0.0, 0.0)]
    pf = portfolio_from_fills(10_000.0, fills)
    assert pf.holdings == {"BTC/USDT": pytest.approx(0.06), "ETH/USDT": 0.5}
    assert pf.cash == pytest.approx(10_000.0 - 4_000.0 - 4.0 - 100.0)
    assert pf.entry_prices["ETH/USDT"] == 2_000.0 and pf.entry_prices["BTC/USDT"] == pytest.approx(40_000.0)


# --- the live executor ---------------------------------------------------------------------------------------------




def adopt_with_the_cli(bus: NatsEndpoint) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | {"AURA_HOME": str(bus.home),
                                                                              "AURA_NATS_URL": bus.url}
    return subprocess.run([sys.executable, "-m", "aura.cli", "journal", "adopt", "--reason",
                           "lost WAL, checked by hand"], env=env, capture_output=True, text=True, timeout=120)


def books_check(health: Any) -> str:
    return str(health.readiness()[1].get("books", ""))


def test_an_empty_journal_beside_coins_halts_until_adopted_then_trades(nats_server: NatsEndpoint,
                                                                         sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)
    sim.sim.set_balance("BTC", "0.0601")  # what a lost journal forgets
    sim.sim.set_balance("ETH", "0.416")
    btc = float(sim.sim.price("BTCUSDT"))

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "ingest", "operator") as js, \
                running(settings, "executor", await_genesis=False) as services:
            health = services["executor"].health

            async def halted() -> str | None:
                text = books_check(health)
                return text if text.startswith("halted") else None

            why = await until(halted, "the executor to halt on the empty journal", timeout=60)
            assert await asyncio.to_thread(lambda: services["executor"].settings.journal_path.exists())
            # While it waits, a cycle ends without a plan (risk has no basis to plan on): an abort of an announced
            # bar.  A snapshot of it would book zero cash, and the adoption would then keep that zero.
            bar = int(sim.sim.now_ms()) // DAY * DAY - DAY
            cycle_id = cycle_id_for("1d", bar)
            await publish(js["ingest"], DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=bar, digest="0" * 64,
                                                  symbols=["BTC/USDT"], bars=1, markets=[]), msg_id=f"r-{cycle_id}")
            await publish(js["ingest"], CycleAborted(cycle_id=cycle_id, stage="ingest", reason="no basis"),
                          msg_id=f"a-{cycle_id}")

            async def noted() -> bool:
                rows = journal_rows(settings, "SELECT count(*) FROM events WHERE kind='abort_before_genesis'")
                return rows[0][0] == 1

            await until(noted, "the abort to be journaled as an event", timeout=60)
            no_snapshot = await _no_snapshot(js["operator"])
            adopted = await asyncio.to_thread(adopt_with_the_cli, nats_server)
            snap = await snapshot(js["operator"])
            plan = await publish_buy(js["risk"], settings, fresh_bar(sim), snap.snapshot_id, qty=0.01, price=btc)

            async def executed() -> PortfolioSnapshot | None:
                s = await snapshot(js["operator"])
                return s if s.plan_id == plan.plan_id else None

            after = await until(executed, "a plan to trade after the adoption", timeout=60)
            return {"why": why, "no_snapshot": no_snapshot, "adopted": adopted, "snap": snap, "after": after,
                    "green": books_check(health)}

    out = asyncio.run(scenario())
    assert "the journal is empty while the exchange holds" in out["why"] and "BTC" in out["why"], out["why"]
    assert out["no_snapshot"], "the executor wrote a genesis beside coins it does not know"
    assert out["adopted"].returncode == 0, out["adopted"].stderr
    snap = out["snap"]
    assert snap.status == "adopted" and snap.holdings == {"BTC/USDT": 0.0601, "ETH/USDT": 0.416}
    assert snap.cash == 10_000.0
    assert out["after"].status == "executed" and out["green"] == "journal == exchange"
    # The books agree exactly: the adopted coins plus what the plan bought, fees taken in the coin bought.
    assert out["after"].holdings["BTC/USDT"] == float(sim.sim.free("BTC")) > 0.0601
    assert out["after"].holdings["ETH/USDT"] == float(sim.sim.free("ETH")) == 0.416


def test_an_adoption_request_made_before_the_halt_never_clears_it(nats_server: NatsEndpoint,
                                                                   sim: SimServer) -> None:
    """An adoption answers the halt the operator saw.  A signed request still stored from an earlier halt (here a
    minute old) sits in ``operator.adopt`` when the journal is lost again: the executor halts and stays halted
    (it once applied the old request within a poll, with the old reason), until the operator adopts again."""
    settings = live_settings(nats_server, sim)
    sim.sim.set_balance("BTC", "0.0601")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "operator") as js:
            old = operator_request(ADOPT_KEY, "operator:earlier", "the last lost WAL",
                                   signing_key(settings.keys, "operator"),
                                   now_ms=int(time.time() * 1000) - 60_000)
            await write_request(await state_kv(js["operator"]), ADOPT_KEY, old)
            async with running(settings, "executor", await_genesis=False) as services:
                health = services["executor"].health

                async def refused() -> str | None:
                    text = books_check(health)
                    return text if health.counters.get("adoptions_refused") and text.startswith("halted") else None

                why = await until(refused, "the old request to be refused", timeout=60)
                await asyncio.sleep(3 * POLL_S)  # polls that would have applied it
                still = books_check(health)
                no_snapshot = await _no_snapshot(js["operator"])
                adopted = await asyncio.to_thread(adopt_with_the_cli, nats_server)
                return {"why": why, "still": still, "no_snapshot": no_snapshot, "adopted": adopted,
                        "snap": await snapshot(js["operator"]), "refusals": health.counters["adoptions_refused"],
                        "green": books_check(health)}

    out = asyncio.run(scenario())
    assert "the journal is empty while the exchange holds" in out["why"], out["why"]
    assert out["still"].startswith("halted") and out["no_snapshot"], "a request older than the halt cleared it"
    assert out["refusals"] == 1, "the stale request was reported at every poll instead of once"
    assert out["adopted"].returncode == 0, out["adopted"].stderr
    assert out["snap"].status == "adopted" and out["snap"].holdings == {"BTC/USDT": 0.0601}
    assert out["green"] == "journal == exchange"


def test_an_adoption_asked_for_while_the_executor_was_down_is_applied_at_its_restart(nats_server: NatsEndpoint,
                                                                                      sim: SimServer) -> None:
    """The halt an executor finds at boot began, for all it knows, when its journal last recorded agreeing books:
    an operator who saw the coins and ran `aura journal adopt` while it was down is answered when it is back."""
    settings = live_settings(nats_server, sim)

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "operator") as js:
            async with running(settings, "executor"):
                pass  # genesis: the books agree, journaled
            sim.sim.set_balance("ETH", "0.5")  # a deposit while it is down
            request = operator_request(ADOPT_KEY, "operator:t", "deposit while down",
                                       signing_key(settings.keys, "operator"))
            await write_request(await state_kv(js["operator"]), ADOPT_KEY, request)
            await asyncio.sleep(ADOPT_SKEW_MS / 1000 + 1)  # down a while longer: asked well before the restart
            async with running(settings, "executor", await_genesis=False) as services:
                async def adopted() -> PortfolioSnapshot | None:
                    snap = await snapshot(js["operator"])
                    return snap if snap.status == "adopted" else None

                snap = await until(adopted, "the adoption asked for while down to be applied", timeout=60)
                return {"snap": snap, "refused": services["executor"].health.counters.get("adoptions_refused", 0),
                        "green": books_check(services["executor"].health)}

    out = asyncio.run(scenario())
    assert out["snap"].holdings == {"ETH/USDT": 0.5} and out["refused"] == 0
    assert out["green"] == "journal == exchange"


def test_coins_the_journal_does_not_know_halt_trading_until_adopted(nats_server: NatsEndpoint,
                                                                     sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)
    btc = float(sim.sim.price("BTCUSDT"))

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor") as services:
            health = services["executor"].health
            basis = (await snapshot(js["operator"])).snapshot_id
            sim.sim.set_balance("ETH", "0.5")  # a deposit (or a manual buy) the journal never saw
            refused = await publish_buy(js["risk"], settings, fresh_bar(sim), basis, price=btc)

            async def letter() -> Any:
                found = [x for x in await dead_letters(js["operator"], "executor") if x.reason == "reconcile_halt"]
                return found[0] if found else None

            dead = await until(letter, "the plan to be refused while halted", timeout=60)
            red = books_check(health)
            adopted = await asyncio.to_thread(adopt_with_the_cli, nats_server)
            snap = await snapshot(js["operator"])
            plan = await publish_buy(js["risk"], settings, fresh_bar(sim), snap.snapshot_id, price=btc)

            async def executed() -> PortfolioSnapshot | None:
                s = await snapshot(js["operator"])
                return s if s.plan_id == plan.plan_id else None

            return {"dead": dead, "red": red, "adopted": adopted, "snap": snap, "refused": refused,
                    "after": await until(executed, "a plan to trade after the adoption", timeout=60)}

    out = asyncio.run(scenario())
    assert out["red"].startswith("halted") and "ETH +0.5" in out["red"], out["red"]
    assert out["dead"].error.startswith("trading halted"), out["dead"].error
    assert out["adopted"].returncode == 0, out["adopted"].stderr
    assert out["snap"].status == "adopted" and out["snap"].holdings == {"ETH/USDT": 0.5}
    assert out["after"].status == "executed" and out["after"].holdings["ETH/USDT"] == 0.5
    assert out["after"].holdings["BTC/USDT"] == float(sim.sim.free("BTC")) < 0.01, "the refused plan traded"


def test_unpriced_coins_the_journal_does_not_hold_are_reported_at_every_comparison(nats_server: NatsEndpoint,
                                                                                   sim: SimServer) -> None:
    settings = live_settings(nats_server, sim)
    sim.sim.set_balance("LUNA", "5000")  # no LUNA/USDT market: the exchange gives no price for it
    capture = Capture()

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor", handler=capture) as services:
            health = services["executor"].health
            out: dict[str, Any] = {"boot": books_check(health), "boot_reports": health.counters["reconcile_unpriced"]}
            basis = (await snapshot(js["operator"])).snapshot_id
            body = await publish_plan(js["risk"], settings, sim, basis, ("ETH/USDT", "buy", 0.1))
            out["bought"] = await until(closed_by(js["operator"], body), "the plan to trade", timeout=60)
            out["reports"] = health.counters["reconcile_unpriced"]
            out["gauge"] = health.gauges["reconcile_unpriced_assets"]
            return out

    out = asyncio.run(scenario())
    # Not held by the journal: no part of equity, so genesis and trading go on, but never silently.
    assert out["boot"] == ("journal == exchange; not in the journal, no USDT price: LUNA journal 0 vs exchange "
                           "5000 (no USDT price)"), out["boot"]
    assert out["boot_reports"] >= 1 and out["reports"] > out["boot_reports"], "not reported at every comparison"
    assert out["gauge"] == 1.0
    assert out["bought"].status == "executed" and out["bought"].holdings["ETH/USDT"] > 0
    warned = [f for f in capture.fields("RECONCILE") if "LUNA" in str(f.get("coins", ""))]
    assert len(warned) >= 3 and warned[0]["quantities"] == {"LUNA": {"journal": 0.0, "exchange": 5000.0}}


def test_an_unpriced_coin_the_journal_holds_at_another_quantity_halts_until_adopted(nats_server: NatsEndpoint,
                                                                                   sim: SimServer) -> None:
    """LUNA's USDT market is gone (no price), the journal holds 10, the exchange 5000: trading halts."""
    settings = live_settings(nats_server, sim)
    settings.journal_path.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(settings.journal_path)  # the journal of an earlier run, which bought 10 LUNA at 1 USDT
    ensure_genesis(journal, 10_000.0)
    journal.begin()
    journal.record_fill("seed-1", "1d-seed", "seed-0", "LUNA/USDT", "buy", 10.0, 1.0, 0.0, 1, fee_base=0.0,
                        fee_quote=0.0)
    write_snapshot(journal, "1d-seed", "", "executed", {})
    journal.commit()
    journal.close()
    sim.sim.set_balance("LUNA", "5000")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js, \
                running(settings, "executor") as services:
            health = services["executor"].health
            basis = (await snapshot(js["operator"])).snapshot_id
            await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))

            async def letter() -> Any:
                found = [x for x in await dead_letters(js["operator"], "executor") if x.reason == "reconcile_halt"]
                return found[0] if found else None

            out: dict[str, Any] = {"dead": await until(letter, "the plan to be refused while halted", timeout=60)}
            out["red"] = health.readiness()
            out["adopted"] = await asyncio.to_thread(adopt_with_the_cli, nats_server)
            basis = (await snapshot(js["operator"])).snapshot_id
            body = await publish_plan(js["risk"], settings, sim, basis, ("BTC/USDT", "buy", 0.01))
            out["after"] = await until(closed_by(js["operator"], body), "a plan to trade after adoption", timeout=60)
            return out

    out = asyncio.run(scenario())
    ok, detail = out["red"]
    assert not ok and detail["books"].startswith("halted"), detail
    # Valued at the journal's own price for LUNA (the exchange quotes none), and said so.
    assert "LUNA +4990" in detail["books"] and "at the journal's price: no USDT quote now" in detail["books"], detail
    assert "LUNA +4990" in out["dead"].error
    assert out["adopted"].returncode == 0, out["adopted"].stderr
    assert out["after"].status == "executed", "the adoption did not clear the halt"
    assert out["after"].holdings["LUNA/USDT"] == 5000.0
    assert out["after"].holdings["BTC/USDT"] == float(sim.sim.free("BTC")) > 0


async def _no_snapshot(js_operator: Any) -> bool:
    from shared.bus import last_message

    return await last_message(js_operator, PortfolioSnapshot.SUBJECT) is None
