"""The kill-switch's rolling window counts bars live as the backtest does (aura/strategy/risk_gates.py): the
executor's snapshot carries one equity point per bar cycle, as many as the longest window allowed on its
timeframe (found by an audit: a fixed 365 points, and a point for every snapshot).

* On hourly bars a 90-day window is 2,160 points; cut to the last 365 (15 days), a slow bleed of 28% over 30
  days read as 16% and never latched.
* A risk tick's refused exit closes with a snapshot every minute; counted as points, 90 of them squeezed a 90-bar
  window into 90 minutes and a 25% drawdown read as 7%.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from aura.strategy.params import StrategyParams, equity_points, rescale
from aura.strategy.risk_gates import kill_switch
from services.executor.journal import Journal
from services.executor.runner import current_snapshot
from shared.cycles import cycle_id_for

DAY, HOUR = 86_400_000, 3_600_000
T0 = 1_700_000_000_000 // DAY * DAY


def record(journal: Journal, cycle_id: str, equity: float) -> None:
    journal.begin()
    journal.record_snapshot(f"s-{cycle_id}", cycle_id, "", "executed", equity, {}, {}, equity)
    journal.commit()


def test_ticks_and_adoptions_do_not_push_bars_out_of_the_window(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    record(journal, "genesis", 100_000.0)
    for day in range(60):  # a peak, then a fall of 25% inside the 90-bar window
        record(journal, cycle_id_for("1d", T0 + day * DAY), 100_000.0 if day < 30 else 75_000.0)
    for minute in range(90):  # a stop-loss exit refused every minute: each tick plan closes with a snapshot
        record(journal, f"tick-{minute:016d}", 74_900.0)
    record(journal, "adopt-1", 75_000.0)
    snap = current_snapshot(journal, "1d")
    assert len(snap.equity_history) == 61 and snap.equity_history[0] == 100_000.0  # the genesis and 60 bars
    assert snap.equity_history[-1] == 75_000.0 and len(snap.equity_history_ms) == 61
    assert kill_switch([*snap.equity_history, 75_000.0], StrategyParams())  # 25%: the default switch fires


def test_an_hourly_snapshot_holds_the_whole_hourly_window(tmp_path: Path) -> None:
    hourly = rescale(StrategyParams(), "1d", "1h").params
    assert hourly.kill_switch_window == 2160 and equity_points("1h") == 4000 and equity_points("1d") == 365
    journal = Journal(tmp_path / "journal.sqlite")
    record(journal, "genesis", 100_000.0)
    # 30 days of hourly bars at the peak, then 30 days falling steadily to 72% of it.
    bars = 60 * 24
    for hour in range(bars):
        fall = max(0, hour - 30 * 24) / (30 * 24)
        record(journal, cycle_id_for("1h", T0 + hour * HOUR), 100_000.0 * (1 - 0.28 * fall))
    snap = current_snapshot(journal, "1h")
    assert len(snap.equity_history) == bars + 1
    assert kill_switch([*snap.equity_history, 72_000.0], hourly)  # 28% from the peak 60 days back: fires
    # The longest hourly window, at a large account's precision, fits AURA_EXEC's max_msg_size with room for
    # the holdings and the signature.
    full = msgspec.structs.replace(snap, equity_history=[1_234_567.12345678 + i for i in range(4000)],
                                   equity_history_ms=[T0 + i * HOUR for i in range(4000)])
    assert len(msgspec.json.encode(full)) < 160 * 1024
    daily = current_snapshot(journal, "1d")  # what a daily system carries: 365 points
    assert len(daily.equity_history) == 365


def test_a_bar_cycle_is_told_apart_as_the_cycle_parser_does() -> None:
    from shared.cycles import as_of_of_cycle, is_bar_cycle

    ids = [cycle_id_for(tf, T0 + k * HOUR) for tf in ("1d", "4h", "1h") for k in range(60)]
    ids += ["genesis", "tick-0123456789abcdef", "adopt-1733356800000", "1d-2024", "1d-20240101T0000x"]
    assert [is_bar_cycle(c) for c in ids] == [as_of_of_cycle(c) is not None for c in ids]
