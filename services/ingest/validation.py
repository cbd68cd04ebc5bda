"""Candle sanity checks on the way into the cache.

``validate_candles`` and ``find_jumps`` are pure: data in, (clean data, issues) out.  ``report_issues`` is
the one place that turns issues into tagged log lines (``[DATA_REJECT]`` / ``[DATA_FLAG]``) and counters,
so nothing bad is ever dropped or stored silently.

Rejected rows never reach the cache: the caller treats their timestamps as *failed* for that provider, so
the next provider in the chain is asked for them.  Flagged rows are stored (they are plausible real data)
but leave a log line and a counter behind.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl

from services.ingest.providers.base import close_cutoff
from shared.logging import warn

REJECT = "reject"
FLAG = "flag"
_MAX_LINES_PER_BATCH = 20  # one bad file must not flood the log: the rest is summarised in one line


@dataclass(frozen=True)
class Issue:
    timestamp: int
    kind: str
    action: str  # REJECT or FLAG
    detail: str = ""


@dataclass(frozen=True)
class Checked:
    frame: pl.DataFrame  # the rows to keep: sorted, unique timestamps
    issues: tuple[Issue, ...]

    @property
    def rejected_ts(self) -> np.ndarray:
        return np.array(sorted({i.timestamp for i in self.issues if i.action == REJECT}), dtype=np.int64)


def validate_candles(frame: pl.DataFrame, iv: int, *, allow_nan_volume: bool = False) -> Checked:
    """Reject impossible candles, flag reordering and exact duplicates; return the keepers sorted."""
    if frame.height == 0:
        return Checked(frame, ())
    issues: list[Issue] = []
    ts = frame["timestamp"].to_numpy()

    back = np.flatnonzero(ts[1:] < ts[:-1]) + 1
    if len(back):
        # Out-of-order rows are real candles in the wrong place: sort them, but say so.
        issues.extend(Issue(int(ts[i]), "out_of_order", FLAG, f"after {int(ts[i - 1])}") for i in back)
        order = np.argsort(ts, kind="stable")
        frame = frame[order]
        ts = ts[order]

    keep = np.ones(len(ts), dtype=bool)
    dup = np.flatnonzero(ts[1:] == ts[:-1]) + 1
    if len(dup):
        values = np.column_stack([frame[c].to_numpy() for c in ("open", "high", "low", "close", "volume")])
        for t in np.unique(ts[dup]):
            rows = np.flatnonzero(ts == t)
            same = all(np.array_equal(values[rows[0]], values[r], equal_nan=True) for r in rows[1:])
            if same:
                keep[rows[1:]] = False
                issues.append(Issue(int(t), "duplicate", FLAG, f"{len(rows)} identical copies, kept one"))
            else:
                # Two different candles for one open time: no way to know which is right, so neither is kept.
                keep[rows] = False
                issues.append(Issue(int(t), "duplicate_conflict", REJECT, f"{len(rows)} different candles"))

    o, h, lo, c, v = (frame[col].to_numpy() for col in ("open", "high", "low", "close", "volume"))
    prices = np.column_stack([o, h, lo, c])
    checks: list[tuple[str, np.ndarray]] = [
        ("off_grid", ts % iv != 0),
        ("nan_price", ~np.isfinite(prices).all(axis=1)),
        ("nonpositive_price", (prices <= 0).any(axis=1)),
        ("high_below_low", h < lo),
        ("open_outside_range", (o > h) | (o < lo)),
        ("close_outside_range", (c > h) | (c < lo)),
        ("negative_volume", (v < 0) | np.isinf(v)),
    ]
    if not allow_nan_volume:
        checks.append(("nan_volume", np.isnan(v)))
    rejected = np.zeros(len(ts), dtype=bool)
    for kind, bad in checks:
        # One issue per row (its first failing check) keeps the counters meaningful.
        new_bad = bad & ~rejected & keep
        for i in np.flatnonzero(new_bad):
            issues.append(Issue(int(ts[i]), kind, REJECT, _row_text(o[i], h[i], lo[i], c[i], v[i])))
        rejected |= new_bad
    keep &= ~rejected
    if not keep.all():
        frame = frame.filter(pl.Series(keep))
    return Checked(frame, tuple(issues))


def find_jumps(ts: np.ndarray, close: np.ndarray, new_mask: np.ndarray, ratio: float) -> list[Issue]:
    """Flag close-to-close moves beyond ``ratio`` (either way) that involve a newly added candle.

    Jumps are flagged, never rejected: real crashes exist (LUNA lost >99% in days) and hiding one would be
    worse than a noisy log line.  Impossible rows are already rejected by ``validate_candles``.
    """
    if len(ts) < 2 or ratio <= 1:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        r = close[1:] / close[:-1]
    big = (r > ratio) | (r < 1.0 / ratio)
    involved = new_mask[1:] | new_mask[:-1]
    return [
        Issue(int(ts[i + 1]), "price_jump", FLAG, f"close {close[i]:.10g} -> {close[i + 1]:.10g} (x{r[i]:.4g})")
        for i in np.flatnonzero(big & involved)
    ]


def drop_forming(frame: pl.DataFrame, iv: int, now_ms: int) -> tuple[pl.DataFrame, int]:
    """Remove candles not closed at ``now_ms`` (open + interval > close_cutoff(now), i.e. within the close
    grace of the providers' base module).  Returns (frame, rows dropped)."""
    if frame.height == 0:
        return frame, 0
    closed = frame["timestamp"].to_numpy() + iv <= close_cutoff(now_ms)
    if closed.all():
        return frame, 0
    return frame.filter(pl.Series(closed)), int((~closed).sum())


def report_issues(
    logger: logging.Logger, issues: list[Issue] | tuple[Issue, ...], counters: Counter[str], *,
    tally: dict[str, int] | None = None, **context: object
) -> None:
    """Log every issue kind with its tag and count it (``reject.<kind>`` / ``flag.<kind>``) in ``counters``
    and, when given, in ``tally`` too (a per-symbol report)."""
    if not issues:
        return
    for issue in issues:
        key = f"{issue.action}.{issue.kind}"
        counters[key] += 1
        if tally is not None:
            tally[key] = tally.get(key, 0) + 1
    for issue in issues[:_MAX_LINES_PER_BATCH]:
        tag = "DATA_REJECT" if issue.action == REJECT else "DATA_FLAG"
        warn(logger, tag, f"{issue.kind} at {issue.timestamp}: {issue.detail}", kind=issue.kind,
             ts=issue.timestamp, **context)
    if len(issues) > _MAX_LINES_PER_BATCH:
        by_kind = Counter(f"{i.action}.{i.kind}" for i in issues[_MAX_LINES_PER_BATCH:])
        warn(logger, "DATA_REJECT" if any(i.action == REJECT for i in issues) else "DATA_FLAG",
             f"{len(issues) - _MAX_LINES_PER_BATCH} more issues not listed", counts=dict(by_kind), **context)


def _row_text(o: float, h: float, lo: float, c: float, v: float) -> str:
    return f"o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}"
