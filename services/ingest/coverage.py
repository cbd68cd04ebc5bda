"""Coverage map of one cache file and the pure merge helpers built on it.

All times are candle open times in ms UTC on the timeframe's grid; ranges are half-open ``[start, end)``.

The coverage map answers "what do we know about every candle in a window?" with exactly three states:

* inside a **span**: the cache holds the candle, and the span names the provider that supplied it;
* inside a **confirmed gap**: no candle exists (every authoritative provider asked said so, none failed);
* anything else is **unresolved**: never asked, or asked and nobody could answer.  Unresolved parts of a
  requested window are kept as *pending* gaps (with the reason) and are asked again on the next sync.

Candles held from a fallback (a provider that is not the exchange's own source, e.g. CoinGecko without
volume) are also listed as **provisional**: resolved, but asked again from the exchange's own sources on
later syncs (for a bounded time) and replaced when they have them.

Nothing here reads a clock or does I/O: callers pass data in and get data back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import polars as pl

from services.ingest.providers.base import Range

FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------------- range maths


def normalize(ranges: list[Range] | tuple[Range, ...]) -> list[Range]:
    """Sorted, disjoint, with touching ranges merged; empty ranges dropped."""
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(a: list[Range], b: list[Range]) -> list[Range]:
    return normalize([*a, *b])


def subtract(a: list[Range], b: list[Range]) -> list[Range]:
    """Parts of ``a`` not covered by ``b`` (both normalized or not)."""
    a, b = normalize(a), normalize(b)
    out: list[Range] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            if cur >= end:
                break
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def intersect(a: list[Range], b: list[Range]) -> list[Range]:
    a, b = normalize(a), normalize(b)
    out: list[Range] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def runs(ts: np.ndarray, iv: int) -> list[Range]:
    """Sorted unique grid times -> maximal ranges of consecutive candles."""
    if len(ts) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ts) != iv)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(ts) - 1]))
    return [(int(ts[s]), int(ts[e]) + iv) for s, e in zip(starts, ends, strict=True)]


def in_ranges(ts: np.ndarray, ranges: list[Range]) -> np.ndarray:
    """Boolean mask: which of ``ts`` fall inside any of the (normalized) ``ranges``."""
    if not ranges or len(ts) == 0:
        return np.zeros(len(ts), dtype=bool)
    starts = np.fromiter((r[0] for r in ranges), dtype=np.int64, count=len(ranges))
    ends = np.fromiter((r[1] for r in ranges), dtype=np.int64, count=len(ranges))
    idx = np.searchsorted(starts, ts, side="right") - 1
    ok = idx >= 0
    ok[ok] = ts[ok] < ends[idx[ok]]
    return ok


def align_up(t: int, iv: int) -> int:
    return -(-t // iv) * iv


def coalesce(ranges: list[Range], max_span: int) -> list[Range]:
    """Join neighbouring ranges whose combined span stays within ``max_span`` (one request can cover them)."""
    out: list[Range] = []
    for start, end in normalize(ranges):
        if out and end - out[-1][0] <= max_span:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


# ------------------------------------------------------------------------------------------- coverage map


@dataclass(frozen=True)
class Span:
    """Consecutive candles in the cache, all supplied by ``provider``."""

    start: int
    end: int
    provider: str
    rows: int


@dataclass(frozen=True)
class Gap:
    """Grid times without a candle.  ``confirmed``: no candle exists; otherwise pending (asked again)."""

    start: int
    end: int
    confirmed: bool
    by: tuple[str, ...] = ()  # confirmed: providers that answered "none"; pending: "provider: reason" notes


@dataclass
class Coverage:
    exchange: str
    symbol: str
    timeframe: str
    interval_ms: int
    spans: list[Span] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # confirmed and pending, sorted by start
    flags: dict[str, list[str]] = field(default_factory=dict)  # provider -> ["no_volume", ...]
    rows: int = 0  # consistency stamp against the parquet file written just before
    first_ms: int | None = None
    last_ms: int | None = None
    updated_ms: int = 0
    disagreements: int = 0  # cumulative cross-check disagreements seen for this file
    provisional: list[Range] = field(default_factory=list)  # held from a fallback; the exchange's own still wanted

    def stamp(self, ts: np.ndarray, now_ms: int) -> None:
        """Record which rows this map describes, so a sidecar left behind by a crash is recognised as stale."""
        self.rows = len(ts)
        self.first_ms = int(ts[0]) if len(ts) else None
        self.last_ms = int(ts[-1]) if len(ts) else None
        self.updated_ms = now_ms

    def resolved(self) -> list[Range]:
        """Where the cache knows the truth: candles held, or confirmed to not exist."""
        return normalize([(s.start, s.end) for s in self.spans] + [(g.start, g.end) for g in self.gaps if g.confirmed])

    def provider_ranges(self) -> dict[str, list[Range]]:
        out: dict[str, list[Range]] = {}
        for s in self.spans:
            out.setdefault(s.provider, []).append((s.start, s.end))
        return {k: normalize(v) for k, v in out.items()}

    def to_json(self) -> str:
        # Not asdict(self): it would deep-copy every span and gap only for them to be replaced below.
        doc: dict[str, Any] = {"format": FORMAT_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}
        doc["flags"] = {k: list(v) for k, v in self.flags.items()}
        doc["spans"] = [[s.start, s.end, s.provider, s.rows] for s in self.spans]
        doc["gaps"] = [{"start": g.start, "end": g.end, "confirmed": g.confirmed, "by": list(g.by)} for g in self.gaps]
        doc["provisional"] = [[a, b] for a, b in self.provisional]
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Coverage:
        doc = json.loads(text)
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown coverage format {doc.get('format')!r}")
        return cls(
            exchange=doc["exchange"],
            symbol=doc["symbol"],
            timeframe=doc["timeframe"],
            interval_ms=int(doc["interval_ms"]),
            spans=[Span(int(a), int(b), str(p), int(n)) for a, b, p, n in doc["spans"]],
            gaps=[Gap(int(g["start"]), int(g["end"]), bool(g["confirmed"]), tuple(g["by"])) for g in doc["gaps"]],
            flags={k: list(v) for k, v in doc.get("flags", {}).items()},
            rows=int(doc.get("rows", 0)),
            first_ms=doc.get("first_ms"),
            last_ms=doc.get("last_ms"),
            updated_ms=int(doc.get("updated_ms", 0)),
            disagreements=int(doc.get("disagreements", 0)),
            # Sidecars written before provisional ranges existed have none: their fallback rows stay as they are.
            provisional=normalize([(int(a), int(b)) for a, b in doc.get("provisional", [])]),
        )

    def matches(self, ts: np.ndarray) -> bool:
        """Does this map describe exactly these cached timestamps (else the sidecar is stale)?"""
        if len(ts) != self.rows:
            return False
        if len(ts) == 0:
            return True
        return int(ts[0]) == self.first_ms and int(ts[-1]) == self.last_ms


def build_spans(ts: np.ndarray, codes: np.ndarray, names: list[str], iv: int) -> list[Span]:
    """Maximal runs of consecutive candles from the same provider (``codes`` index into ``names``)."""
    if len(ts) == 0:
        return []
    cut = np.flatnonzero((np.diff(ts) != iv) | (np.diff(codes) != 0))
    starts = np.concatenate(([0], cut + 1))
    ends = np.concatenate((cut, [len(ts) - 1]))
    return [
        Span(int(ts[s]), int(ts[e]) + iv, names[int(codes[s])], int(e - s + 1))
        for s, e in zip(starts, ends, strict=True)
    ]


def attribute(ts: np.ndarray, spans: list[Span], names: list[str], unknown: str) -> np.ndarray:
    """Provider code of each cached row from the spans; rows outside every span get ``unknown``."""
    if unknown not in names:
        names.append(unknown)
    codes = np.full(len(ts), names.index(unknown), dtype=np.int16)
    if not spans or len(ts) == 0:
        return codes
    starts = np.array([s.start for s in spans], dtype=np.int64)
    ends = np.array([s.end for s in spans], dtype=np.int64)
    span_codes = []
    for s in spans:
        if s.provider not in names:
            names.append(s.provider)
        span_codes.append(names.index(s.provider))
    span_codes_arr = np.array(span_codes, dtype=np.int16)
    idx = np.searchsorted(starts, ts, side="right") - 1
    ok = idx >= 0
    ok[ok] = ts[ok] < ends[idx[ok]]
    codes[ok] = span_codes_arr[idx[ok]]
    return codes


def rebuild_gaps(
    old: list[Gap],
    window: list[Range],
    confirmed: list[tuple[Range, tuple[str, ...]]],
    pending: list[Gap],
    filled: list[Range] | None = None,
) -> list[Gap]:
    """New gap list after a sync that examined ``window``.

    Old confirmed gaps stay (a gap the exchange confirmed does not come back); old pending gaps inside the
    window are replaced by this sync's verdict, those outside it are kept unless candles now ``filled``
    them (e.g. rows that arrived with the lookback padding).
    """
    kept: list[Gap] = []
    for g in old:
        if g.confirmed:
            kept.append(g)
            continue
        for start, end in subtract([(g.start, g.end)], window):
            kept.append(Gap(start, end, False, g.by))
    kept.extend(Gap(r[0], r[1], True, by) for r, by in confirmed)
    kept.extend(pending)
    if filled:
        kept = [Gap(s, e, g.confirmed, g.by) for g in kept for s, e in subtract([(g.start, g.end)], filled)]
    # A pending gap later confirmed or filled must disappear: confirmed wins over pending.
    confirmed_ranges = normalize([(g.start, g.end) for g in kept if g.confirmed])
    out: list[Gap] = []
    for g in kept:
        if g.confirmed:
            out.append(g)
        else:
            out.extend(Gap(s, e, False, g.by) for s, e in subtract([(g.start, g.end)], confirmed_ranges))
    return merge_adjacent_gaps(sorted(out, key=lambda g: (g.start, not g.confirmed)))


def merge_adjacent_gaps(gaps: list[Gap]) -> list[Gap]:
    out: list[Gap] = []
    for g in gaps:
        if out and out[-1].end >= g.start and out[-1].confirmed == g.confirmed:
            prev = out[-1]
            by = tuple(dict.fromkeys(prev.by + g.by))
            out[-1] = Gap(prev.start, max(prev.end, g.end), prev.confirmed, by)
        else:
            out.append(g)
    return out


# ------------------------------------------------------------------------------------------ merge helpers


@dataclass(frozen=True)
class Disagreement:
    timestamp: int
    column: str
    kept: float  # value already held (higher priority or cached)
    other: float  # value the lower-priority provider sent
    rel: float


def member(ts: np.ndarray, sorted_known: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``ts`` are in ``sorted_known`` (sorted unique), by binary search."""
    if len(sorted_known) == 0 or len(ts) == 0:
        return np.zeros(len(ts), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_known, ts), len(sorted_known) - 1)
    return sorted_known[idx] == ts


def sorted_unique(ts: np.ndarray) -> np.ndarray:
    if len(ts) < 2 or bool(np.all(ts[1:] > ts[:-1])):
        return ts  # the common case (validated, sorted data) costs one pass instead of a sort
    return np.unique(ts)


def split_new(frame: pl.DataFrame, targets: list[Range], known_ts: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows to add: inside ``targets`` and not known yet, rows overlapping known candles: to cross-check)."""
    ts = frame["timestamp"].to_numpy()
    known = member(ts, known_ts)
    new = in_ranges(ts, normalize(targets)) & ~known
    return frame.filter(pl.Series(new)), frame.filter(pl.Series(known))


def cross_check(
    known: pl.DataFrame, other: pl.DataFrame, tol: float, compare_volume: bool
) -> list[Disagreement]:
    """Compare ``other`` against ``known`` on common timestamps; relative differences above ``tol``."""
    if other.height == 0 or known.height == 0:
        return []
    joined = known.join(other, on="timestamp", how="inner", suffix="_o")
    if joined.height == 0:
        return []
    cols = ["open", "high", "low", "close"] + (["volume"] if compare_volume else [])
    out: list[Disagreement] = []
    ts = joined["timestamp"].to_numpy()
    for col in cols:
        a = joined[col].to_numpy()
        b = joined[f"{col}_o"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = np.maximum(np.abs(a), np.abs(b))
            rel = np.where(denom > 0, np.abs(a - b) / np.where(denom > 0, denom, 1.0), 0.0)
        both = ~(np.isnan(a) | np.isnan(b))  # a NaN volume (no_volume provider) is not a disagreement
        bad = np.flatnonzero(both & (rel > tol))
        out.extend(Disagreement(int(ts[i]), col, float(a[i]), float(b[i]), float(rel[i])) for i in bad)
    return sorted(out, key=lambda d: (d.timestamp, d.column))


def combine(frames: list[pl.DataFrame], codes: list[np.ndarray]) -> tuple[pl.DataFrame, np.ndarray]:
    """Concatenate disjoint candle frames (and their provider codes) sorted by timestamp."""
    nonempty = [(f, c) for f, c in zip(frames, codes, strict=True) if f.height]
    if not nonempty:
        return frames[0].clear() if frames else pl.DataFrame(), np.zeros(0, dtype=np.int16)
    frame = pl.concat([f for f, _ in nonempty], how="vertical")
    code = np.concatenate([c for _, c in nonempty])
    ts = frame["timestamp"].to_numpy()
    if len(ts) > 1 and not np.all(ts[1:] > ts[:-1]):
        order = np.argsort(ts, kind="stable")
        frame = frame[order]
        code = code[order]
    return frame, code
