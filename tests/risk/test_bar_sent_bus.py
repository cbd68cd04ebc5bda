"""The participation cap's count of what a decision bar already sent survives a restart of risk
(services/risk/bar_budget.py), on a real secured nats-server: the count as risk stores and reads it with its own
credential and key, and the risk and executor service bodies around a restart.

The restart: a kill-switch liquidation of 0.2 BTC on bars that traded 1.5 BTC; 10% is 0.15 BTC a bar.  The first
risk sells 0.15 and is stopped; a new risk on the same bus and the same bar must sell nothing more (the bar's room
is used), and the rest only on the next bar.  Kept in memory only, the count started again at the restart and the
new risk sold the bar's room a second time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats.errors
import pytest

from aura.strategy.types import Leg
from services.risk import bar_budget
from services.risk.bar_budget import BarBudget, SentDoc, SentInBar, SentQty, verified_count
from shared.bus import kv_get, state_kv
from shared.config import Settings
from shared.contracts import ApprovedPlan, PortfolioSnapshot
from shared.credentials import signing_key
from shared.health import HealthState
from shared.signing import load_public_key, sign_struct
from shared.state_keys import BAR_SENT_KEY
from tests.bus_helpers import Capture, approved_plans, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint
from tests.risk.test_participation_bus import rest_of_the_bar, tick_snapshots
from tests.risk.test_risk_tick_bus import buy, market_moves, tick_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
CAP = 0.1
BAR = 1_704_153_600_000  # the open time of a decision bar
VOLUMES = {"BTC/USDT": 1.5, "ETH/USDT": 40.0}


def logger_with(capture: Capture) -> logging.Logger:
    logger = logging.getLogger("aura.test.bar_budget")
    logger.setLevel(logging.DEBUG)
    logger.handlers[:] = [capture]
    return logger


async def load(settings: Settings, js_risk: Any, capture: Capture, health: HealthState | None = None) -> BarBudget:
    """What a risk booting now reads: the count in aura_state, through risk's own credential, with risk's key."""
    return await BarBudget.load(js_risk, signing_key(settings.keys, "risk"), CAP,
                                health or HealthState(service="risk"), logger_with(capture))


def test_the_count_is_stored_signed_and_read_back_at_boot(nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()
    capture = Capture()

    async def scenario() -> tuple[dict[Any, float], SentInBar, dict[Any, float], dict[Any, float]]:
        async with role_connections(settings, "risk", "operator") as js:
            first = await load(settings, js["risk"], capture)
            assert first.on(BAR, VOLUMES) == {}  # nothing stored yet: nothing sent
            await first.record(BAR, [Leg("BTC/USDT", "sell", 0.15, 25_000.0, "kill_switch"),
                                     Leg("ETH/USDT", "buy", 2.0, 2_000.0, "rebalance")])
            await first.record(BAR, [Leg("BTC/USDT", "sell", 0.05, 25_000.0, "kill_switch")])
            # The operator reads it and can check it is risk's: signed with risk's key.
            raw, _ = await kv_get(await state_kv(js["operator"]), BAR_SENT_KEY)
            assert raw is not None
            stored = verified_count(raw, load_public_key(settings.public_key_path))
            same_bar = (await load(settings, js["risk"], capture)).on(BAR, VOLUMES)
            next_bar = (await load(settings, js["risk"], capture)).on(BAR + 86_400_000, VOLUMES)
            return first.on(BAR, VOLUMES), stored, same_bar, next_bar

    in_memory, stored, same_bar, next_bar = asyncio.run(scenario())
    want = {("BTC/USDT", "sell"): pytest.approx(0.2), ("ETH/USDT", "buy"): 2.0}
    assert in_memory == want and stored.sent == want and stored.bar_ms == BAR and not stored.buys_closed
    assert same_bar == want, "a new risk on the same bar starts from what the bar already sent"
    assert next_bar == {}, "a count for an older bar is ignored"
    assert capture.fields("BAR_BUDGET")[-1]["bar_ms"] == BAR
    assert not capture.fields("FORGED_STATE")


def forgeries(settings: Settings) -> dict[str, bytes]:
    """Values of the key that risk must not trust, each written with risk's bus credential (the only one that may
    write it): as a compromised or buggy holder of that credential could, without risk's signing key."""
    doc = SentDoc(bar_ms=BAR, sent=(SentQty(symbol="BTC/USDT", side="buy", qty=0.0),))
    return {
        "garbage": b"\x00not a count",
        "unsigned": msgspec.json.encode(doc),
        "signed with another key": msgspec.json.encode(sign_struct(doc, signing_key(settings.keys, "executor"))),
        "a count signed by risk, then altered": msgspec.json.encode(msgspec.structs.replace(
            sign_struct(doc, signing_key(settings.keys, "risk")), bar_ms=BAR + 1)),
        "a negative quantity signed by risk": msgspec.json.encode(sign_struct(
            SentDoc(bar_ms=BAR, sent=(SentQty(symbol="BTC/USDT", side="buy", qty=-5.0),)),
            signing_key(settings.keys, "risk"))),
    }


@pytest.mark.parametrize("kind", ["garbage", "unsigned", "signed with another key",
                                  "a count signed by risk, then altered", "a negative quantity signed by risk"])
def test_a_forged_or_unreadable_count_closes_the_bars_buys_and_keeps_its_exits(nats_server: NatsEndpoint,
                                                                                kind: str) -> None:
    """Risk cannot know what the bar sent: no buy on the first bar it decides on (its room counts as used), exits
    keep their room; logged [FORGED_STATE].  The closed buy side is stored signed with that bar's next count, so
    another restart on the bar keeps it closed; the next bar opens."""
    settings = nats_server.settings()
    capture = Capture()
    health = HealthState(service="risk")

    async def scenario() -> tuple[dict[Any, float], dict[Any, float], dict[Any, float]]:
        async with role_connections(settings, "risk") as js:
            await (await state_kv(js["risk"])).put(BAR_SENT_KEY, forgeries(settings)[kind])
            budget = await load(settings, js["risk"], capture, health)
            first = budget.on(BAR, VOLUMES)
            await budget.record(BAR, [Leg("BTC/USDT", "sell", 0.15, 25_000.0, "stop_loss")])
            again = (await load(settings, js["risk"], capture)).on(BAR, VOLUMES)
            later = (await load(settings, js["risk"], capture)).on(BAR + 86_400_000, VOLUMES)
            return first, again, later

    first, again, later = asyncio.run(scenario())
    room = {("BTC/USDT", "buy"): pytest.approx(CAP * 1.5), ("ETH/USDT", "buy"): pytest.approx(CAP * 40.0)}
    assert first == room, "every buy's room counts as used, no sell is counted"
    assert again == {**room, ("BTC/USDT", "sell"): 0.15}, "a restart on the same bar keeps the buys closed"
    assert later == {}
    lines = capture.fields("FORGED_STATE")
    assert len(lines) == 1 and "does not verify" in lines[0]["msg"] and lines[0]["error"], lines
    assert health.counters.get("forged_state") == 1


@pytest.mark.parametrize("attack", ["deleted", "an older count of risk's written again"])
def test_a_deleted_or_replayed_count_closes_the_bars_buys(nats_server: NatsEndpoint, attack: str) -> None:
    """Risk's signature proves who wrote a count, not that it is the newest: with risk's bus credential alone, the
    count could be deleted, or an earlier one (less sent) put back, and a restart would hand the bar's room out
    again.  Each count names the revision it replaces (shared/kv_chain.py): both read as unknown at boot."""
    settings = nats_server.settings()
    capture = Capture()
    health = HealthState(service="risk")

    async def scenario() -> dict[Any, float]:
        async with role_connections(settings, "risk") as js:
            kv = await state_kv(js["risk"])
            first = await load(settings, js["risk"], capture)
            await first.record(BAR, [Leg("ETH/USDT", "buy", 1.0, 2_000.0, "rebalance")])
            earlier, _ = await kv_get(kv, BAR_SENT_KEY)
            await first.record(BAR, [Leg("ETH/USDT", "buy", 3.0, 2_000.0, "rebalance")])
            if attack == "deleted":
                await kv.delete(BAR_SENT_KEY)
            else:
                assert earlier is not None
                await kv.put(BAR_SENT_KEY, earlier)  # signed by risk, verifies: only its place in the chain is wrong
            return (await load(settings, js["risk"], capture, health)).on(BAR, VOLUMES)

    counts = asyncio.run(scenario())
    assert counts[("ETH/USDT", "buy")] >= 4.0, f"the bar's buys are closed, not reopened to what it had sent: {counts}"
    assert counts[("BTC/USDT", "buy")] == pytest.approx(CAP * 1.5)
    lines = capture.fields("FORGED_STATE")
    assert len(lines) == 1 and ("deleted" if attack == "deleted" else "came between") in lines[0]["error"], lines
    assert health.counters.get("forged_state") == 1


def test_a_count_written_by_somebody_else_while_risk_runs_is_overwritten(nats_server: NatsEndpoint) -> None:
    """Risk counts in memory once booted; a write by anybody else in between does not stop its next write (a
    refusal a forger could repeat would hold every plan back): risk's count goes on top, logged."""
    settings = nats_server.settings()
    capture = Capture()
    health = HealthState(service="risk")

    async def scenario() -> tuple[SentInBar, dict[Any, float]]:
        async with role_connections(settings, "risk") as js:
            budget = await load(settings, js["risk"], capture, health)
            await budget.record(BAR, [Leg("ETH/USDT", "buy", 1.0, 2_000.0, "rebalance")])
            await (await state_kv(js["risk"])).put(BAR_SENT_KEY, b"\x00forged")
            await budget.record(BAR, [Leg("ETH/USDT", "buy", 2.0, 2_000.0, "rebalance")])
            raw, _ = await kv_get(await state_kv(js["risk"]), BAR_SENT_KEY)
            assert raw is not None
            return verified_count(raw, load_public_key(settings.public_key_path)), \
                (await load(settings, js["risk"], Capture())).on(BAR, VOLUMES)

    stored, reread = asyncio.run(scenario())
    assert stored.sent == {("ETH/USDT", "buy"): 3.0} and reread == {("ETH/USDT", "buy"): 3.0}
    lines = capture.fields("FORGED_STATE")
    assert len(lines) == 1 and lines[0]["overwritten_revision"] > 0, lines
    assert health.counters.get("forged_state") == 1


def test_a_forged_count_is_sealed_on_the_first_bar_even_when_nothing_is_sent(nats_server: NatsEndpoint) -> None:
    """A flat book sends nothing on the closed bar, so no plan's write replaces the bad value: risk stores the bar it
    closed as soon as it knows it.  A restart on that bar keeps its buys closed; one on a later bar reads a good
    count and opens (before, every start closed its first bar again, for as long as nothing was sent)."""
    settings = nats_server.settings()
    capture = Capture()

    async def scenario() -> tuple[dict[Any, float], dict[Any, float]]:
        async with role_connections(settings, "risk") as js:
            await (await state_kv(js["risk"])).put(BAR_SENT_KEY, forgeries(settings)["garbage"])
            budget = await load(settings, js["risk"], capture)
            await budget.seal(BAR)
            budget.on(BAR, VOLUMES)
            again = (await load(settings, js["risk"], capture)).on(BAR, VOLUMES)
            later = await load(settings, js["risk"], capture)
            await later.seal(BAR + 86_400_000)
            return again, later.on(BAR + 86_400_000, VOLUMES)

    again, later = asyncio.run(scenario())
    assert again == {("BTC/USDT", "buy"): pytest.approx(CAP * 1.5), ("ETH/USDT", "buy"): pytest.approx(CAP * 40.0)}
    assert later == {}, "the next bar opens"
    assert len(capture.fields("FORGED_STATE")) == 1, "only the start that read the bad value reports it"


def test_a_count_that_cannot_be_stored_is_not_taken_and_raises(nats_server: NatsEndpoint) -> None:
    """The bus refuses the write (here: risk's connection is gone): record raises, so the plan that was to follow
    is never published, and the count in memory and in the bucket is the one before."""
    settings = nats_server.settings()
    capture = Capture()

    health = HealthState(service="risk")

    async def scenario() -> tuple[BaseException | None, dict[Any, float], dict[Any, float]]:
        async with role_connections(settings, "risk") as js:
            budget = await load(settings, js["risk"], capture, health)
            await budget.record(BAR, [Leg("BTC/USDT", "sell", 0.1, 25_000.0, "stop_loss")])
            await js["risk"]._nc.close()
            failure: BaseException | None = None
            try:
                await budget.record(BAR, [Leg("BTC/USDT", "sell", 0.05, 25_000.0, "stop_loss")])
            except Exception as exc:
                failure = exc
            in_memory = budget.on(BAR, VOLUMES)
        async with role_connections(settings, "risk") as js:
            return failure, in_memory, (await load(settings, js["risk"], capture)).on(BAR, VOLUMES)

    failure, in_memory, stored = asyncio.run(scenario())
    assert isinstance(failure, nats.errors.ConnectionClosedError), repr(failure)
    assert in_memory == stored == {("BTC/USDT", "sell"): 0.1}
    lines = capture.fields("BAR_BUDGET")
    assert any("could not be stored; the plan is not published" in x["msg"] and x["bar_ms"] == BAR for x in lines)
    assert health.counters.get("bar_budget_write_errors") == 1


def test_a_restart_of_risk_mid_bar_does_not_hand_out_the_bars_room_again(nats_server: NatsEndpoint) -> None:
    settings = tick_settings(nats_server)
    capture = Capture()

    async def scenario() -> tuple[list[PortfolioSnapshot], list[PortfolioSnapshot], list[ApprovedPlan]]:
        async with running(settings, "executor", handler=capture), \
                role_connections(settings, "ingest", "risk", "operator") as js:
            async with running(settings, "risk", handler=capture):
                await buy(js["risk"], settings, 0.2, 40_000.0)
                await market_moves(js["ingest"], settings, 25_000.0, volume=1.5)  # a 30% drawdown: liquidate
                first = await until(lambda: tick_snapshots(js["operator"], 1), "the first liquidation tick")
            # The first risk is gone; a new one starts on the same bus, on the same bar.
            async with running(settings, "risk", handler=capture):
                same_bar, after = await rest_of_the_bar(capture, js, settings)
            return first + same_bar, after, await approved_plans(js["operator"])

    same_bar, after, plans = asyncio.run(scenario())
    tick_plans = [p.plan for p in plans if p.plan.cycle_id.startswith("tick-")]
    assert len({s.snapshot_id for s in same_bar}) == 1, (
        f"the restarted risk sold on the bar again: {[[(x.side, x.qty) for x in p.legs] for p in tick_plans]}")
    assert same_bar[0].holdings == pytest.approx({"BTC/USDT": 0.05})
    assert after[-1].holdings == {}
    assert [[(x.side, x.qty) for x in p.legs] for p in tick_plans] == [[("sell", 0.15)], [("sell", 0.05)]]
    assert any(r.startswith("participation cap: BTC/USDT sell cut from 0.2 to 0.15") for r in tick_plans[0].reasons)


def test_the_risk_service_publishes_no_plan_whose_count_it_could_not_store(nats_server: NatsEndpoint,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The running service on a real bus: while the bucket refuses the count (a timeout, as a real put raises when
    the server does not answer), a stop-loss tick publishes no exit plan; once it takes it, the exit goes out."""
    settings = tick_settings(nats_server)
    capture = Capture()
    real_write = bar_budget.write_count
    refusing = [True]

    async def write_count(*args: Any, **kwargs: Any) -> int:
        if refusing[0]:
            raise nats.errors.TimeoutError
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(bar_budget, "write_count", write_count)

    async def scenario() -> tuple[list[ApprovedPlan], PortfolioSnapshot, PortfolioSnapshot, list[ApprovedPlan]]:
        async with running(settings, "executor", "risk", handler=capture), \
                role_connections(settings, "ingest", "risk", "operator") as js:
            holding = await buy(js["risk"], settings, 0.1, 40_000.0)
            await market_moves(js["ingest"], settings, 33_000.0)  # -17.5%: below the 15% stop

            async def refused_twice() -> bool:
                return sum(1 for x in capture.fields("BAR_BUDGET") if "could not be stored" in x["msg"]) >= 2

            await until(refused_twice, "two stop-loss ticks whose count the bucket refused")
            during = [p for p in await approved_plans(js["operator"]) if p.plan.cycle_id.startswith("tick-")]
            still = await snapshot(js["operator"])
            refusing[0] = False

            async def exited() -> PortfolioSnapshot | None:
                snap = await snapshot(js["operator"])
                return snap if snap.cycle_id.startswith("tick-") else None

            await until(exited, "the stop-loss exit once the count is stored")
            after = [p for p in await approved_plans(js["operator"]) if p.plan.cycle_id.startswith("tick-")]
            return during, still, holding, after

    during, still, holding, after = asyncio.run(scenario())
    assert during == [], "an exit plan was published although its count was not stored"
    assert still.snapshot_id == holding.snapshot_id and still.holdings == holding.holdings
    assert any(x["msg"] == "risk tick failed" for x in capture.fields("RISK_TICK"))
    assert [[(x.side, x.qty) for x in p.plan.legs] for p in after] == [[("sell", 0.1)]]
