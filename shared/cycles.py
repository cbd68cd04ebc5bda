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


TICK_PREFIX = "tick-"  # a risk tick's exit plan: named by a digest of what it saw (services/risk/tick.py), no bar


def is_tick_cycle(cycle_id: str) -> bool:
    return cycle_id.startswith(TICK_PREFIX)


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


# How far ahead of the exchange's clock a bar may close and still be believed closed.  Ingest takes a bar only
# once the venue's own clock has passed its close (plus a grace), and risk reads that same clock afterwards, so
# this is read-to-read jitter, not a tolerance: half a bar (12 hours on 1d) let a compromised ingest date data
# ahead and re-arm the kill-switch that much early.
FUTURE_SKEW_MS = 60_000


def check_data_time(as_of_ms: int, exchange_ms: int | None, bar_ms: int, max_age_ms: int) -> str | None:
    """Live only (``exchange_ms``: the venue's clock): why a target or plan on the bar opening at ``as_of_ms`` must
    not be planned or traded, or None (``bar_ms`` 0: ``as_of_ms`` is a moment, a risk tick's price read).  Too old
    ([STALE_PLAN]): the bar closed more than a bar plus the grace ago.  From the future: a bar that has not closed
    yet, whatever ingest announced; the kill-switch counts its cooldown on these data times, so a future-dated
    announcement would otherwise re-arm it early, and the executor closes its cycles by them."""
    if exchange_ms is None:
        return None
    if exchange_ms - as_of_ms > max_age_ms:
        return f"stale: data of {as_of_ms} is {(exchange_ms - as_of_ms) / 1000:.0f}s old by the exchange's clock " \
               f"(limit {max_age_ms / 1000:.0f}s)"
    if as_of_ms + bar_ms > exchange_ms + FUTURE_SKEW_MS:
        what = f"the bar opening at {as_of_ms} has not closed" if bar_ms else f"data of {as_of_ms} is dated ahead of"
        return f"future: {what} by the exchange's clock ({exchange_ms})"
    return None
