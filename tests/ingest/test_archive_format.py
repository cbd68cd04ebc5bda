"""Binance archive format: CSV parsing, ms/µs open times, CHECKSUM bodies, which files to ask for."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from aura.exchange_sim.archive import build_kline_csv, build_zip, checksum_body, flag_encrypted
from services.ingest.providers.base import CLOSE_GRACE_MS
from services.ingest.providers.binance_archive import (
    ArchiveFormatError,
    normalize_open_times,
    parse_checksum,
    parse_kline_csv,
    plan_files,
    unzip_single,
)
from services.ingest.sync import sync
from tests.ingest.conftest import DAY, cached, ms, source

# Two real lines of the documented format (BTCUSDT 1d, 2024-01-01 and 2025-01-01 in µs).
REAL_MS = b"1704067200000,42283.58000000,44184.10000000,42180.77000000,44179.55000000,27174.29903000,1704153599999,1169995682.25352860,1145602,14071.67815000,606156012.83474670,0\n"  # noqa: E501
REAL_US = b"1735689600000000,93576.00000000,95151.15000000,92888.00000000,94591.79000000,10373.32613000,1735775999999999,979649921.51850430,1569796,5126.83710000,484206823.28718340,0\n"  # noqa: E501


def test_parse_ms_and_us_lines_to_ms() -> None:
    frame = parse_kline_csv(REAL_MS + REAL_US)
    assert frame["timestamp"].to_list() == [1_704_067_200_000, 1_735_689_600_000]
    assert frame["close"].to_list() == [44179.55, 94591.79]
    assert frame["volume"].to_list() == [27174.29903, 10373.32613]
    assert frame.columns == ["timestamp", "open", "high", "low", "close", "volume"]


def test_header_line_tolerated() -> None:
    header = b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"  # noqa: E501
    assert parse_kline_csv(header + REAL_MS)["timestamp"].to_list() == [1_704_067_200_000]


@pytest.mark.parametrize("raw", [1_704_067_200, 17_040_672_000_000, 1_735_689_600_000_001, 10**17])
def test_unknown_unit_is_refused_not_guessed(raw: int) -> None:
    # seconds, a value between the ms and µs bands, a µs value off the ms grid, nanoseconds
    with pytest.raises(ArchiveFormatError):
        normalize_open_times(np.array([raw]))


def test_checksum_body() -> None:
    body = b"zipbytes"
    text = checksum_body(body, "BTCUSDT-1d-2024-01.zip").decode()
    assert parse_checksum(text, "BTCUSDT-1d-2024-01.zip") == hashlib.sha256(body).hexdigest()
    with pytest.raises(ValueError):
        parse_checksum(text, "ETHUSDT-1d-2024-01.zip")
    with pytest.raises(ValueError):
        parse_checksum("not a checksum", "x.zip")


def test_simulated_zip_round_trip_is_exact_for_real_rows(shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1h", "ETH_USDT").head(2000)
    arrays = {c: src[c].to_numpy() for c in src.columns}
    for micros in (False, True):
        body = build_zip("x.csv", build_kline_csv(arrays, 3_600_000, micros))
        assert_frame_equal(parse_kline_csv(unzip_single(body)), src)


def test_plan_monthly_for_complete_months_daily_for_current() -> None:
    now = ms("2024-12-06")
    files, fallback = plan_files("http://x", "BTCUSDT", "1d", [(ms("2024-10-20"), ms("2024-12-06"))], now)
    names = [f.name for f in files]
    assert names == ["BTCUSDT-1d-2024-10.zip", "BTCUSDT-1d-2024-11.zip"] + [
        f"BTCUSDT-1d-2024-12-0{d}.zip" for d in range(1, 6)
    ]
    assert files[0].url == "http://x/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-10.zip"
    assert files[2].url == "http://x/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12-01.zip"
    # November is the previous month: if its monthly file is not published yet, its days are tried instead.
    assert [f.name for f in fallback[(ms("2024-11-01"), ms("2024-12-01"))]][:2] == [
        "BTCUSDT-1d-2024-11-01.zip", "BTCUSDT-1d-2024-11-02.zip"]


def test_plan_skips_days_not_over_yet() -> None:
    wanted = [(ms("2024-12-05"), ms("2024-12-06T10:00"))]
    files, _ = plan_files("http://x", "BTCUSDT", "1h", wanted, ms("2024-12-06T11:00"))
    assert [f.name for f in files] == ["BTCUSDT-1h-2024-12-05.zip"]


@pytest.mark.integration
def test_2025_archive_files_in_microseconds_sync_exactly(data, venue, archive, make_config,
                                                        shared_data_dir: Path) -> None:
    """Real BTC rows of Jan-Feb 2024 relabelled 366 days later (2025-01-01..2025-03-01): the archive writes µs.

    January and February come as monthly files, 2025-03-01 as a daily file (March is the current month).
    """
    real = source(shared_data_dir, "1d", "BTC_USDT").filter(
        (pl.col("timestamp") >= ms("2024-01-01")) & (pl.col("timestamp") < ms("2024-03-01")))
    relabelled = real.with_columns(pl.col("timestamp") + 366 * DAY)
    assert relabelled["timestamp"][0] == ms("2025-01-01")
    data.set("1d", "BTC_USDT", relabelled)
    venue.sim.set_now(ms("2025-03-02"))

    zip_path = "/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2025-01.zip"
    first_line = unzip_single(venue.archive.zip_for(zip_path)[1]).split(b"\n")[0]
    assert first_line.startswith(b"1735689600000000,")  # 16 digits: microseconds on the wire

    cfg = make_config(providers=("archive",))
    report = sync(["BTC/USDT"], "binance", "1d", ms("2025-01-01"), None, cfg, ms("2025-03-02") + CLOSE_GRACE_MS)
    assert report.complete, report.symbols["BTC/USDT"].gaps
    assert_frame_equal(cached(cfg, "1d", "BTC_USDT"), relabelled)
    assert archive.counts["zip"] == 3  # 2025-01, 2025-02 monthly + 2025-03-01 daily


def test_zip_flagged_encrypted_is_a_bad_zip_not_a_runtime_error() -> None:
    body = build_zip("BTCUSDT-1d-2024-01.csv", REAL_MS)
    with pytest.raises(zipfile.BadZipFile, match="encrypted"):
        unzip_single(flag_encrypted(body))
