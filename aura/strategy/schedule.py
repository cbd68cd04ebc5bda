"""When a signal cycle happens: a pure function of the bar's open time, so live and backtest agree."""

from __future__ import annotations

from numba import njit

_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def timeframe_ms(timeframe: str) -> int:
    """'1d' -> 86_400_000, '4h' -> 14_400_000, '15m' -> 900_000."""
    tf = timeframe.strip().lower()
    if len(tf) < 2 or tf[-1] not in _UNIT_MS or not tf[:-1].isdigit():
        raise ValueError(f"unknown timeframe {timeframe!r}")
    return int(tf[:-1]) * _UNIT_MS[tf[-1]]


@njit(cache=True)
def is_decision_bar(open_time_ms: int, bar_ms: int, every: int) -> bool:
    """Signal cycles run on bars whose index since the Unix epoch is a multiple of ``every``.

    Anchoring on the epoch (not on the first bar of a run) means a backtest started on any date and the
    live service make their decisions on the same bars.
    """
    return every <= 1 or (open_time_ms // bar_ms) % every == 0
