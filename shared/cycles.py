"""Data cycles are named by their bar, and a stale-data notice must name the bar it is about.

A data cycle's id is its timeframe and the open time of the newest closed bar (``1d-20240102T0000``): ingest
names every ``DataReady`` and ``DataStale`` so, risk and the executor read the bar back from it, the console and
``aura trades`` time a fill by it.  Because the id is the bar, a cycle closes once per bar: an abort notice can
add at most one equity point per bar that has closed, never one per message (the kill-switch's rolling window
counts those points, so junk ids would dilute it).

``notice_problem`` is the one check of a ``DataStale`` that risk (before refusing targets on older data) and the
executor (before letting an abort of that cycle become an equity point) both make, and the executor makes it of
a ``DataReady`` too; each brings its own clock (risk: services/risk/stale.py; the executor: the venue's clock,
or the replay's newest bar).
"""

from __future__ import annotations

import calendar
import re
import time

from aura.strategy.schedule import timeframe_ms
from shared.contracts import DataReady, DataStale


def cycle_id_for(timeframe: str, as_of_ms: int) -> str:
    return f"{timeframe}-{time.strftime('%Y%m%dT%H%M', time.gmtime(as_of_ms / 1000))}"


_BAR_CYCLE = re.compile(r"[0-9a-z]+-\d{8}T\d{4}")


def is_bar_cycle(cycle_id: str) -> bool:
    """Whether ``cycle_id`` is a bar's (:func:`cycle_id_for`), without parsing its date: the journal asks it of
    every point of the kill-switch's window at every snapshot, and ``strptime`` took 4 ms for 365 of them."""
    return _BAR_CYCLE.fullmatch(cycle_id) is not None


def as_of_of_cycle(cycle_id: str) -> int | None:
    """The bar open time (ms) a cycle id of :func:`cycle_id_for` names; None for any other id (genesis, a risk
    tick's ``tick-...``)."""
    _, _, stamp = cycle_id.partition("-")
    try:
        return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M")) * 1000
    except ValueError:
        return None


def notice_problem(notice: DataStale | DataReady, timeframe: str, now_ms: int, clock: str) -> str:
    """Why ``notice`` may not count ('' when it may): a notice of another timeframe, one whose id does not name
    its own bar, or one dated more than one bar after ``now_ms`` (what ``clock`` says now)."""
    what = "stale notice" if isinstance(notice, DataStale) else "data notice"
    if notice.timeframe != timeframe:
        return f"{what} {notice.cycle_id[:80]!r} is for {notice.timeframe[:20]!r} bars, not {timeframe}"
    named = cycle_id_for(timeframe, notice.as_of_ms)
    if notice.cycle_id != named:
        return f"{what} {notice.cycle_id[:80]!r} does not name its bar (as of {notice.as_of_ms}: {named})"
    if notice.as_of_ms > now_ms + timeframe_ms(timeframe):
        return f"{what} {named} is dated more than one bar after {clock} ({now_ms})"
    return ""
