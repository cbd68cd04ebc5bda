"""The kill-switch gauge ``aura_halted`` follows the latch on every path that changes it or loads it, on a real,
secured nats-server with the risk service's (and the paper executor's) real ``run(ctx)`` bodies: a tick that
latches, a re-arm after the cooldown, an operator reset, and a risk that starts on a stored latch.  Each value is
read from the service's Prometheus registry, exactly what /metrics exports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aura.strategy.params import StrategyParams
from services.risk.latch import LatchDoc, read_latch, write_latch
from shared.bus import state_kv
from shared.credentials import signing_key
from shared.live_params import promote, sign_document
from shared.operator_requests import RESET_KEY, operator_request, write_request
from shared.service import ServiceContext
from tests.bus_helpers import role_connections, running, until
from tests.conftest import NatsEndpoint
from tests.risk.test_risk_tick_bus import buy, market_moves, tick_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def halted_gauge(ctx: ServiceContext) -> float | None:
    """``aura_halted`` as risk's /metrics exports it (None: no sample)."""
    return ctx.health.registry.get_sample_value("aura_halted", {"service": "risk"})


async def gauge_reads(ctx: ServiceContext, value: float, what: str) -> None:
    async def shows() -> bool:
        return halted_gauge(ctx) == value

    await until(shows, what)


def test_the_halted_gauge_follows_a_tick_that_latches_and_the_rearm_after_the_cooldown(
        nats_server: NatsEndpoint) -> None:
    """Before: only a cycle set the gauge, so a kill-switch latched by a tick read 0 on every dashboard."""
    settings = tick_settings(nats_server)
    params = StrategyParams(kill_switch_cooldown=2, kill_switch_cap=0.5)  # a re-arming switch needs a cap
    risk_public = signing_key(settings.keys, "risk").public_key()

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with role_connections(settings, "ingest", "risk", "operator") as js:
            key = signing_key(settings.keys, "operator")
            await promote(js["operator"], sign_document(params, key, "operator:test", "re-arm after two bars"), key)
            async with running(settings, "executor", "risk") as contexts:
                risk = contexts["risk"]
                await gauge_reads(risk, 0, "the armed switch at boot")
                await buy(js["risk"], settings, 0.2, 40_000.0)  # 80% of the book in BTC
                await market_moves(js["ingest"], settings, 25_000.0, day=1)  # a 30% drawdown: the tick latches
                await gauge_reads(risk, 1, "the gauge to show the latch a tick set")
                out["latched"] = (await read_latch(js["operator"], risk_public))[0]
                await market_moves(js["ingest"], settings, 25_000.0, day=3)  # two bars later: re-armed by itself
                await gauge_reads(risk, 0, "the gauge to show the re-arm")
                out["rearmed"] = (await read_latch(js["operator"], risk_public))[0]
        return out

    out = asyncio.run(scenario())
    assert out["latched"].halted and out["latched"].cycle_id.startswith("tick-"), out["latched"]
    assert not out["rearmed"].halted and out["rearmed"].rearmed_at_ms > 0, out["rearmed"]


def test_a_starting_risk_shows_the_stored_latch_and_an_operator_reset_clears_the_gauge(
        nats_server: NatsEndpoint) -> None:
    """A restart read 0 until a decision happened to run; a reset, applied outside a cycle, left it as it was."""
    no_tick = tick_settings(nats_server, AURA_RISK_TICK_S="0")  # no tick, no target: no decision at all
    ticking = tick_settings(nats_server)
    risk_key = signing_key(no_tick.keys, "risk")
    operator = signing_key(no_tick.keys, "operator")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with role_connections(no_tick, "risk", "operator") as js:
            # Latched and capped by an earlier run of risk: only an operator reset clears it.
            await write_latch(js["risk"], LatchDoc(halted=True, capped=True, cycle_id="c9"), risk_key, 0)
            async with running(no_tick, "risk") as contexts:
                await gauge_reads(contexts["risk"], 1, "a starting risk to show the stored latch")
            async with running(ticking, "executor", "risk") as contexts:
                risk = contexts["risk"]
                await gauge_reads(risk, 1, "the latch to stay shown while ticks run on it")
                await write_request(await state_kv(js["operator"]), RESET_KEY,
                                    operator_request(RESET_KEY, "operator:ann", "checked", operator))
                await gauge_reads(risk, 0, "the gauge to show the operator reset applied")
                out["cleared"] = (await read_latch(js["operator"], risk_key.public_key()))[0]
        return out

    out = asyncio.run(scenario())
    cleared = out["cleared"]
    assert not cleared.halted and cleared.reset_by == "operator:ann" and cleared.reason == "checked", cleared
