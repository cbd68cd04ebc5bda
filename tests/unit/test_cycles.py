"""A data cycle is named by its bar, and a stale notice counts only as its own bar, at most one bar ahead."""

from __future__ import annotations

from shared.contracts import DataStale
from shared.cycles import as_of_of_cycle, cycle_id_for, notice_problem

DAY = 86_400_000
NOW = 1_704_412_800_000  # 2024-01-05T00:00Z


def notice(as_of_ms: int, timeframe: str = "1d", cycle_id: str | None = None) -> DataStale:
    return DataStale(cycle_id=cycle_id or cycle_id_for(timeframe, as_of_ms), timeframe=timeframe, reason="x",
                     as_of_ms=as_of_ms)


def test_a_cycle_id_names_its_bar_and_reads_back() -> None:
    assert cycle_id_for("1d", NOW) == "1d-20240105T0000"
    assert cycle_id_for("1h", NOW + 3_600_000) == "1h-20240105T0100"
    assert as_of_of_cycle(cycle_id_for("4h", NOW + 4 * 3_600_000)) == NOW + 4 * 3_600_000
    assert as_of_of_cycle("tick-1704412800000") is None and as_of_of_cycle("genesis") is None


def test_a_notice_is_accepted_up_to_exactly_one_bar_ahead_and_refused_one_millisecond_later() -> None:
    assert notice_problem(notice(NOW), "1d", NOW, "the clock") == ""
    assert notice_problem(notice(NOW - 30 * DAY), "1d", NOW, "the clock") == ""  # old: harmless
    assert notice_problem(notice(NOW + DAY), "1d", NOW, "the clock") == ""
    late = notice_problem(notice(NOW + DAY), "1d", NOW - 1, "the exchange's clock")
    assert late == f"stale notice 1d-20240106T0000 is dated more than one bar after the exchange's clock ({NOW - 1})"
    hour = 3_600_000
    assert notice_problem(notice(NOW + hour, "1h"), "1h", NOW, "c") == ""
    assert "more than one bar" in notice_problem(notice(NOW + 2 * hour, "1h"), "1h", NOW, "c")


def test_a_notice_of_another_timeframe_or_not_named_by_its_bar_is_refused() -> None:
    assert "is for '4h' bars, not 1d" in notice_problem(notice(NOW, "4h"), "1d", NOW, "c")
    junk = notice_problem(notice(NOW, cycle_id="junk-\x01" * 50), "1d", NOW, "c")
    assert "does not name its bar (as of 1704412800000: 1d-20240105T0000)" in junk
    assert len(junk) < 250, "a forged id is quoted only in part"
    other_bar = notice(NOW, cycle_id=cycle_id_for("1d", NOW - DAY))
    assert "does not name its bar" in notice_problem(other_bar, "1d", NOW, "c")
