"""Risk's /readyz turns red when its ticks keep failing: the stop-losses and the kill-switch are then unchecked.

A deleted state bucket once failed every tick ("risk tick failed", once a second) while risk answered ready."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

import services.risk.tick_loop as tick_loop_module
from services.risk.tick_loop import TICK_FAILURES_RED, tick_loop
from shared.health import HealthState

CHECKED = SimpleNamespace(outcome=object(), price_verdict=None)  # a tick that checked the stops


def run_ticks(monkeypatch: pytest.MonkeyPatch, script: list[Any]) -> tuple[list[tuple[bool, str]], HealthState]:
    """Drive risk's tick loop through ``script`` (per tick: an exception it raises, or the decision it returns);
    what /readyz said before each tick, and the health after the last."""
    script = list(script)
    seen: list[tuple[bool, str]] = []
    health = HealthState(service="risk")
    risk: Any = SimpleNamespace(ctx=SimpleNamespace(settings=SimpleNamespace(risk_tick_s=0.01), health=health,
                                                    logger=logging.getLogger("t"), stop=None), lock=None)

    async def scripted_tick(_risk: Any) -> Any:
        seen.append(health.checks["risk_tick"]())
        step = script.pop(0)
        if not script:
            risk.ctx.stop.set()
        if isinstance(step, Exception):
            raise step
        return step

    monkeypatch.setattr(tick_loop_module, "tick", scripted_tick)

    async def scenario() -> None:
        risk.ctx.stop = asyncio.Event()
        risk.lock = asyncio.Lock()
        await asyncio.wait_for(tick_loop(risk), 10)

    asyncio.run(scenario())
    return seen, health


def test_failed_ticks_in_a_row_turn_readyz_red_and_a_good_tick_green(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, health = run_ticks(monkeypatch, [RuntimeError("bucket aura_state not found")] * TICK_FAILURES_RED
                             + [CHECKED])
    assert [ok for ok, _ in seen] == [True] * TICK_FAILURES_RED + [False], seen
    assert "stops unchecked" in seen[-1][1] and "bucket aura_state not found" in seen[-1][1]
    assert health.checks["risk_tick"]() == (True, "ticking")


def test_ticks_that_cannot_price_a_held_coin_turn_readyz_red_and_a_skipped_tick_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a tick whose price read lacked a held coin returned normally and counted as a good tick, so a coin
    the venue stopped quoting left its stop unchecked for as long as it lasted while risk answered ready."""
    unpriced = SimpleNamespace(outcome=None, price_verdict=SimpleNamespace(
        shortfall={"LUNA/USDT": 120.0}, reason="held symbols missing from the price read"))
    seen, health = run_ticks(monkeypatch, [unpriced] * (TICK_FAILURES_RED - 1) + [None, unpriced, None, CHECKED])
    # Two unpriced ticks, a skipped one (still amber), the third unpriced one: red, and a skip keeps it red.
    assert [ok for ok, _ in seen] == [True] * (TICK_FAILURES_RED + 1) + [False, False], seen
    assert "stops unchecked" in seen[-1][1] and "LUNA/USDT" in seen[-1][1], seen[-1]
    assert health.checks["risk_tick"]() == (True, "ticking")
