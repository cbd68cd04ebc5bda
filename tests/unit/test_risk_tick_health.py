"""Risk's /readyz turns red when its ticks keep failing: the stop-losses and the kill-switch are then unchecked.

A deleted state bucket once failed every tick ("risk tick failed", once a second) while risk answered ready."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

import services.risk.tick_loop as tick_loop_module
from aura.strategy.params import StrategyParams
from aura.strategy.types import MarketRule
from services.risk.sync_guard import GuardState
from services.risk.tick import Latch, evaluate_tick
from services.risk.tick_loop import TICK_FAILURES_RED, tick_loop
from shared.contracts import PortfolioSnapshot
from shared.health import HealthState

CHECKED = SimpleNamespace(outcome=object(), price_verdict=SimpleNamespace(shortfall={}))  # stops checked


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


def real_decisions(price_reads: list[dict[str, float] | None]) -> list[Any]:
    """What the real ``evaluate_tick`` decides on these reads, in turn (its sync guard carried along), for a
    book holding BTC and ETH."""
    book = PortfolioSnapshot(snapshot_id="s-1", cycle_id="1d-20240101T0000", plan_id="p-1", status="executed",
                             cash=1000.0, holdings={"BTC/USDT": 0.2, "ETH/USDT": 1.0},
                             entry_prices={"BTC/USDT": 40_000.0, "ETH/USDT": 2000.0}, equity=11_000.0,
                             equity_history=[10_000.0, 11_000.0])
    rules = {s: MarketRule(s, 0.0001, 0.01, 0.0001, 5.0) for s in book.holdings}
    guard, out = GuardState(), []
    for prices in price_reads:
        decision = evaluate_tick(book, prices, rules, StrategyParams(), 0.001, Latch(False, 0), guard, {})
        guard = decision.guard
        out.append(decision)
    return out


def test_ticks_that_cannot_price_a_held_coin_turn_readyz_red_and_a_skipped_tick_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a tick whose price read lacked a held coin counted as a good tick once the sync guard confirmed
    the shortfall (the coin is then valued at its last mark, so its stop can never trigger), and reset the count
    on the third such tick: a coin the venue stopped quoting left its stop unchecked, for as long as it lasted,
    while risk answered ready."""
    without_eth = {"BTC/USDT": 41_000.0}
    unpriced = real_decisions([without_eth] * 4 + [{"BTC/USDT": 41_000.0, "ETH/USDT": 2100.0}])
    assert [d.price_verdict.status for d in unpriced] == ["unconfirmed", "unconfirmed", "confirmed", "confirmed",
                                                          "in_sync"], unpriced
    assert unpriced[2].outcome is not None  # confirmed: the tick runs, ETH at its last mark
    # Two unpriced ticks, a skipped one (no snapshot yet: nothing checked, nothing changes), the third unpriced
    # one (confirmed): red, and it stays red until a read prices every holding.
    seen, health = run_ticks(monkeypatch, [*unpriced[:2], None, *unpriced[2:]])
    assert [ok for ok, _ in seen] == [True] * (TICK_FAILURES_RED + 1) + [False, False], seen
    assert "stops unchecked" in seen[-1][1] and "ETH/USDT" in seen[-1][1], seen[-1]
    assert health.checks["risk_tick"]() == (True, "ticking")


def test_a_price_read_that_fails_with_coins_held_counts_as_a_failed_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = real_decisions([None] * TICK_FAILURES_RED)
    seen, health = run_ticks(monkeypatch, [*failed, CHECKED])
    assert [ok for ok, _ in seen] == [True] * TICK_FAILURES_RED + [False], seen
    assert "price read failed" in seen[-1][1], seen[-1]
    assert health.checks["risk_tick"]() == (True, "ticking")


def test_an_unpriceable_sliver_of_a_delisted_pair_does_not_keep_the_ticks_failing() -> None:
    """Found by an audit: an exit leaves less than one lot step behind; once its pair is delisted nothing prices or
    sells it, and every tick counted as failed, /readyz red for good over a few cents.  Dust at its last mark is
    not expected to be priced (AURA_RECONCILE_DUST_USDT); a real holding still is."""
    book = PortfolioSnapshot(snapshot_id="s-1", cycle_id="1d-20240101T0000", plan_id="p-1", status="executed",
                             cash=1000.0, holdings={"BTC/USDT": 0.2, "LUNA/USDT": 0.004},
                             entry_prices={"BTC/USDT": 40_000.0, "LUNA/USDT": 80.0}, equity=9_000.0,
                             equity_history=[10_000.0, 9_000.0])
    rules = {"BTC/USDT": MarketRule("BTC/USDT", 0.0001, 0.01, 0.0001, 5.0)}
    read = {"BTC/USDT": 41_000.0}  # the venue no longer quotes LUNA
    dust = evaluate_tick(book, read, rules, StrategyParams(), 0.001, Latch(False, 0), GuardState(), {},
                         dust_usdt=5.0)
    assert dust.price_verdict.status == "in_sync" and dust.outcome is not None  # 0.32 USDT of LUNA: dust
    counted = evaluate_tick(book, read, rules, StrategyParams(), 0.001, Latch(False, 0), GuardState(), {},
                            dust_usdt=0.1)
    assert counted.price_verdict.status == "unconfirmed"  # above the allowance it is a holding to price
