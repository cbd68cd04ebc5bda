"""The bar's count as the participation cap reads it (services/risk/bar_budget.py), without a bus: a count that
could not be read closes the buy side of the first bar decided on (exits stay open), and only that bar."""

from __future__ import annotations

import logging
import math

import pytest

from aura.strategy.capacity import cap_legs
from aura.strategy.types import Leg, MarketRule
from services.risk.bar_budget import BarBudget, SentInBar, whole_room
from shared.health import HealthState

RULES = {s: MarketRule(s, 0.001, 0.01, 0.001, 5.0) for s in ("BTC/USDT", "ETH/USDT")}
VOLUMES = {"BTC/USDT": 1.5, "ETH/USDT": 40.0, "DOGE/USDT": math.nan}
BAR, DAY = 1_704_153_600_000, 86_400_000


def test_an_unreadable_count_closes_the_first_bars_buys_and_leaves_its_exits_their_room() -> None:
    count = SentInBar(buys_closed=True)
    sent = count.on(100, VOLUMES, 0.1)
    assert set(sent) == {("BTC/USDT", "buy"), ("ETH/USDT", "buy")}  # no volume: capacity caps nothing anyway
    legs = [Leg("BTC/USDT", "sell", 0.2, 40_000.0, "stop_loss"), Leg("ETH/USDT", "buy", 1.0, 2_000.0, "rebalance")]
    kept, reasons = cap_legs(legs, VOLUMES, 0.1, RULES, sent)
    assert [(x.symbol, x.side, x.qty) for x in kept] == [("BTC/USDT", "sell", 0.15)]  # the exit: the bar's room
    assert any(r.startswith("participation cap: ETH/USDT buy of") and "dropped" in r for r in reasons), reasons
    # Still closed for the rest of that bar, also once something was sent on it; the next bar opens again.
    count.add(100, kept)
    assert count.on(100, VOLUMES, 0.1)[("ETH/USDT", "buy")] == sent[("ETH/USDT", "buy")]
    assert count.on(200, VOLUMES, 0.1) == {}
    assert count.buys_closed is False


def test_a_closed_buy_side_leaves_no_sliver_of_room_whatever_the_rounding() -> None:
    """No lot step and no minimums (a symbol without rules): any room rounding left would be bought.  On the first
    two, max_participation * volume counted as sent leaves a buy of about 1e-15 standing."""
    cases = [(0.024, 221.769), (0.364, 711.221)] + [(m, v) for m in (0.1, 0.07, 1e-7, 1.0)
                                                    for v in (1.5, 1e-3, 7.77, 3e11)]
    for max_part, volume in cases:
        used = whole_room(volume, max_part)
        assert not volume - used / max_part > 0, (volume, max_part)
        assert used == pytest.approx(max_part * volume, rel=1e-12)
        kept, _ = cap_legs([Leg("X/USDT", "buy", volume, 1.0, "rebalance")], {"X/USDT": volume}, max_part, {},
                           {("X/USDT", "buy"): used})
        assert kept == [], (volume, max_part)
    naive = {("X/USDT", "buy"): 0.024 * 221.769}
    assert cap_legs([Leg("X/USDT", "buy", 1.0, 1.0, "rebalance")], {"X/USDT": 221.769}, 0.024, {}, naive)[0]


def test_counting_ahead_leaves_the_count_as_it_was() -> None:
    """What the write-ahead stores is computed apart: memory moves only once it is stored."""
    count = SentInBar()
    count.add(100, [Leg("BTC/USDT", "sell", 0.15, 1.0, "kill_switch")])
    ahead = count.after(100, [Leg("BTC/USDT", "sell", 0.05, 1.0, "kill_switch")])
    assert count.sent == {("BTC/USDT", "sell"): 0.15}
    assert ahead.sent == {("BTC/USDT", "sell"): pytest.approx(0.2)} and ahead.bar_ms == 100
    assert count.after(200, []).sent == {} and count.bar_ms == 100


def test_a_plan_that_failed_to_go_out_gives_its_exits_back_and_keeps_its_buys() -> None:
    """A publish that raised may never reach the executor: a stop-loss on the same bar must not find its room used
    by it.  Its buys stay counted (it may have gone out after all)."""
    budget = BarBudget(None, None, SentInBar(), 0, 0.1, HealthState(service="risk"),  # type: ignore[arg-type]
                       logging.getLogger("test"))
    budget.count = budget.count.after(BAR, [Leg("BTC/USDT", "sell", 0.05, 1.0, "stop_loss")])
    failed = [Leg("BTC/USDT", "sell", 0.1, 1.0, "kill_switch"), Leg("ETH/USDT", "buy", 2.0, 1.0, "rebalance")]
    budget.count = budget.count.after(BAR, failed)
    budget.unsend(BAR, failed)
    assert budget.on(BAR, {}) == {("BTC/USDT", "sell"): pytest.approx(0.05), ("ETH/USDT", "buy"): 2.0}
    budget.unsend(BAR + DAY, failed)  # another bar's plan changes nothing here
    assert budget.on(BAR, {}) == {("BTC/USDT", "sell"): pytest.approx(0.05), ("ETH/USDT", "buy"): 2.0}


def test_exits_given_back_are_stored_before_the_next_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A give-back (a plan whose exit did not fill) lives in memory until stored: ``seal``, before every decision,
    stores it, or a restart read the sells as sent and held the stop-loss back for the bar after all (an audit)."""
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.risk import bar_budget

    stored: list[SentInBar] = []

    async def write_count(js: object, count: SentInBar, key: object, revision: int) -> tuple[int, int]:
        stored.append(SentInBar(count.bar_ms, dict(count.sent), count.buys_closed))
        return revision + 1, 0

    monkeypatch.setattr(bar_budget, "write_count", write_count)
    budget = BarBudget(None, Ed25519PrivateKey.generate(), SentInBar(), 0, 0.1,  # type: ignore[arg-type]
                       HealthState(service="risk"), logging.getLogger("t.budget"))
    stop = Leg("BTC/USDT", "sell", 0.15, 40_000.0, "stop_loss")

    async def scenario() -> None:
        await budget.record(BAR, [stop])
        budget.unsend(BAR, [stop])  # the executor did not fill it
        await budget.seal(BAR)  # the next tick
        await budget.seal(BAR)  # nothing new: nothing written

    asyncio.run(scenario())
    assert [c.sent for c in stored] == [{("BTC/USDT", "sell"): 0.15}, {("BTC/USDT", "sell"): 0.0}]
