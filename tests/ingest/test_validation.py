"""Every bad-row kind is rejected (or flagged) with its tag and a counter, never stored silently."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import polars as pl
import pytest

from services.ingest.providers.base import CLOSE_GRACE_MS
from services.ingest.validation import FLAG, REJECT, drop_forming, find_jumps, report_issues, validate_candles
from shared.logging import JsonFormatter

IV = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % IV


def candles(rows: list[tuple[int, float, float, float, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["timestamp", "open", "high", "low", "close", "volume"], orient="row")


GOOD = (100.0, 110.0, 90.0, 105.0, 5.0)
BAD_ROWS = {
    "nan_price": (float("nan"), 110.0, 90.0, 105.0, 5.0),
    "nonpositive_price": (0.0, 110.0, 0.0, 105.0, 5.0),
    "high_below_low": (100.0, 90.0, 110.0, 100.0, 5.0),
    "open_outside_range": (120.0, 110.0, 90.0, 105.0, 5.0),
    "close_outside_range": (100.0, 110.0, 90.0, 80.0, 5.0),
    "negative_volume": (100.0, 110.0, 90.0, 105.0, -1.0),
    "nan_volume": (100.0, 110.0, 90.0, 105.0, float("nan")),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_each_bad_row_kind_is_rejected_with_tag_and_counter(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    frame = candles([(T0, *GOOD), (T0 + IV, *BAD_ROWS[kind]), (T0 + 2 * IV, *GOOD)])
    checked = validate_candles(frame, IV)
    assert checked.frame["timestamp"].to_list() == [T0, T0 + 2 * IV]
    assert [(i.kind, i.action, i.timestamp) for i in checked.issues] == [(kind, REJECT, T0 + IV)]
    assert checked.rejected_ts.tolist() == [T0 + IV]

    counters: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING, logger="aura.ingest.test"):
        report_issues(logging.getLogger("aura.ingest.test"), checked.issues, counters, symbol="BTC/USDT")
    assert counters == Counter({f"reject.{kind}": 1})
    line = JsonFormatter("ingest").format(caplog.records[0])
    assert json.loads(line)["tag"] == "DATA_REJECT" and "[DATA_REJECT]" in line and kind in line


def test_off_grid_timestamp_rejected() -> None:
    checked = validate_candles(candles([(T0 + 1, *GOOD)]), IV)
    assert checked.frame.height == 0 and checked.issues[0].kind == "off_grid"


def test_nan_volume_allowed_only_for_no_volume_providers() -> None:
    frame = candles([(T0, *BAD_ROWS["nan_volume"])])
    assert validate_candles(frame, IV, allow_nan_volume=True).frame.height == 1


def test_out_of_order_is_sorted_and_flagged() -> None:
    frame = candles([(T0, *GOOD), (T0 + 2 * IV, *GOOD), (T0 + IV, *GOOD)])
    checked = validate_candles(frame, IV)
    assert checked.frame["timestamp"].to_list() == [T0, T0 + IV, T0 + 2 * IV]
    assert [(i.kind, i.action) for i in checked.issues] == [("out_of_order", FLAG)]


def test_duplicates_identical_kept_once_conflicting_rejected() -> None:
    other = (100.0, 111.0, 90.0, 105.0, 5.0)
    frame = candles([(T0, *GOOD), (T0, *GOOD), (T0 + IV, *GOOD), (T0 + IV, *other), (T0 + 2 * IV, *GOOD)])
    checked = validate_candles(frame, IV)
    assert checked.frame["timestamp"].to_list() == [T0, T0 + 2 * IV]
    kinds = {(i.kind, i.action, i.timestamp) for i in checked.issues}
    assert kinds == {("duplicate", FLAG, T0), ("duplicate_conflict", REJECT, T0 + IV)}


def test_price_jumps_are_flagged_not_rejected() -> None:
    ts = np.array([T0, T0 + IV, T0 + 2 * IV, T0 + 3 * IV], dtype=np.int64)
    close = np.array([100.0, 101.0, 2000.0, 2001.0])
    jumps = find_jumps(ts, close, new_mask=np.array([False, False, True, True]), ratio=10.0)
    assert [(j.kind, j.action, j.timestamp) for j in jumps] == [("price_jump", FLAG, T0 + 2 * IV)]
    assert find_jumps(ts, close, new_mask=np.zeros(4, dtype=bool), ratio=10.0) == []  # old data: not re-flagged


def test_forming_candle_dropped() -> None:
    frame = candles([(T0, *GOOD), (T0 + IV, *GOOD)])
    kept, dropped = drop_forming(frame, IV, now_ms=T0 + IV + CLOSE_GRACE_MS)  # the second closes at T0 + 2h
    assert kept["timestamp"].to_list() == [T0] and dropped == 1
    # Exactly at its close it is not taken yet: the exchange's clock may trail ours (close grace).
    kept, dropped = drop_forming(frame, IV, now_ms=T0 + 2 * IV)
    assert kept["timestamp"].to_list() == [T0] and dropped == 1
    kept, dropped = drop_forming(frame, IV, now_ms=T0 + 2 * IV + CLOSE_GRACE_MS - 1)
    assert dropped == 1
    kept, dropped = drop_forming(frame, IV, now_ms=T0 + 2 * IV + CLOSE_GRACE_MS)
    assert kept.height == 2 and dropped == 0
