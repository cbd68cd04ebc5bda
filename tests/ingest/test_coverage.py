"""Pure coverage maths: ranges, spans by provider, gap bookkeeping, sidecar round trip."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.coverage import (
    Coverage,
    Gap,
    Span,
    attribute,
    build_spans,
    coalesce,
    cross_check,
    in_ranges,
    intersect,
    normalize,
    rebuild_gaps,
    runs,
    split_new,
    subtract,
    union,
)

IV = 10

ranges_st = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda t: (min(t) * IV, max(t) * IV)),
                     max_size=6)


def points(ranges: list[tuple[int, int]]) -> set[int]:
    return {t for s, e in ranges for t in range(s, e, IV)}


@given(ranges_st, ranges_st)
def test_range_algebra_matches_set_algebra(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    assert points(subtract(a, b)) == points(a) - points(b)
    assert points(union(a, b)) == points(a) | points(b)
    assert points(intersect(a, b)) == points(a) & points(b)
    norm = normalize(a)
    assert all(x[1] < y[0] for x, y in itertools.pairwise(norm))  # disjoint, not touching, sorted


def test_runs_and_membership() -> None:
    ts = np.array([0, 10, 20, 50, 60, 90], dtype=np.int64)
    assert runs(ts, IV) == [(0, 30), (50, 70), (90, 100)]
    mask = in_ranges(np.array([0, 25, 30, 55, 95, 100]), [(0, 30), (50, 70), (90, 100)])
    assert mask.tolist() == [True, True, False, True, True, False]


def test_coalesce_joins_only_within_one_page() -> None:
    assert coalesce([(0, 10), (20, 30), (100, 110)], max_span=50) == [(0, 30), (100, 110)]


def test_spans_split_on_provider_change_and_holes() -> None:
    ts = np.array([0, 10, 20, 30, 50, 60], dtype=np.int64)
    codes = np.array([0, 0, 1, 1, 1, 0], dtype=np.int16)
    spans = build_spans(ts, codes, ["archive", "tail"], IV)
    assert spans == [Span(0, 20, "archive", 2), Span(20, 40, "tail", 2), Span(50, 60, "tail", 1),
                     Span(60, 70, "archive", 1)]
    names: list[str] = []
    back = attribute(ts, spans, names, "cache")
    assert [names[c] for c in back] == ["archive", "archive", "tail", "tail", "tail", "archive"]


def test_rebuild_gaps_keeps_confirmed_replaces_pending_in_window() -> None:
    old = [Gap(0, 20, True, ("a",)), Gap(100, 200, False, ("x: down",)), Gap(500, 600, False, ("x: down",))]
    new = rebuild_gaps(old, window=[(0, 300)], confirmed=[((150, 160), ("a",))], pending=[Gap(180, 190, False, ("y",))])
    assert new == [Gap(0, 20, True, ("a",)), Gap(150, 160, True, ("a",)), Gap(180, 190, False, ("y",)),
                   Gap(500, 600, False, ("x: down",))]


def test_coverage_json_round_trip_and_resolved() -> None:
    cov = Coverage("binance", "BTC/USDT", "1d", IV, spans=[Span(0, 30, "binance_archive", 3)],
                   gaps=[Gap(30, 50, True, ("binance_archive",)), Gap(50, 60, False, ("ccxt:binance: down",))],
                   flags={"coingecko": ["no_volume"]}, rows=3, first_ms=0, last_ms=20, updated_ms=99)
    back = Coverage.from_json(cov.to_json())
    assert back == cov
    assert back.resolved() == [(0, 50)]  # the pending gap is not resolved: it will be asked again
    assert back.matches(np.array([0, 10, 20])) and not back.matches(np.array([0, 10]))


def test_split_new_and_cross_check() -> None:
    frame = pl.DataFrame({"timestamp": [0, 10, 20, 30], "open": [1.0, 2, 3, 4], "high": [1.0, 2, 3, 4],
                          "low": [1.0, 2, 3, 4], "close": [1.0, 2, 3, 4], "volume": [1.0, 1, 1, 1]})
    new, overlap = split_new(frame, [(20, 40)], known_ts=np.array([10], dtype=np.int64))
    assert new["timestamp"].to_list() == [20, 30]  # 0 is outside what was asked: dropped
    assert overlap["timestamp"].to_list() == [10]
    known = frame.filter(pl.col("timestamp") == 10).with_columns(close=pl.lit(2.1))
    diffs = cross_check(known, overlap, tol=0.01, compare_volume=True)
    assert [(d.timestamp, d.column) for d in diffs] == [(10, "close")]
    assert cross_check(known, overlap, tol=0.1, compare_volume=True) == []


def test_provisional_ranges_round_trip_and_old_sidecars_have_none() -> None:
    cov = Coverage("binance", "BTC/USDT", "4h", IV, spans=[Span(0, 30, "coingecko", 3)], rows=3, first_ms=0,
                   last_ms=20, provisional=[(10, 30)])
    back = Coverage.from_json(cov.to_json())
    assert back == cov and back.provisional == [(10, 30)]
    assert back.resolved() == [(0, 30)]  # provisional candles are held: a cycle does not wait for them
    doc = json.loads(cov.to_json())
    del doc["provisional"]  # a sidecar written before provisional ranges existed
    assert Coverage.from_json(json.dumps(doc)).provisional == []
