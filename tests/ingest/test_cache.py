"""Cache files: atomic writes that survive a crash, readers during writes, and the fast panel loader."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from services.ingest import cache
from services.ingest.cache import candle_path, load_panel, read_candles, write_candles
from tests.ingest.conftest import DAY, source


def test_write_read_round_trip_same_layout_as_shared_data(tmp_path: Path, shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1d", "ETH_USDT")
    path = candle_path(tmp_path, "binance", "1d", "ETH/USDT")
    assert path == tmp_path / "binance" / "1d" / "ETH_USDT.parquet"
    write_candles(path, src)
    assert_frame_equal(read_candles(path), src)
    assert pl.read_parquet_schema(path) == pl.read_parquet_schema(shared_data_dir / "binance/1d/ETH_USDT.parquet")


def test_refuses_unsorted_or_duplicate_rows(tmp_path: Path, shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1d", "ETH_USDT").head(5)
    with pytest.raises(ValueError):
        write_candles(tmp_path / "x.parquet", pl.concat([src, src.head(1)]))
    assert not (tmp_path / "x.parquet").exists()


def test_crash_between_temp_write_and_rename_leaves_old_file(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(shared_data_dir, "1d", "BTC_USDT")
    path = candle_path(tmp_path, "binance", "1d", "BTC/USDT")
    write_candles(path, src.head(100))
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_candles(path, src)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is intact, byte for byte
    assert_frame_equal(read_candles(path), src.head(100))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_crash_mid_write_leaves_old_file(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(shared_data_dir, "1d", "BTC_USDT")
    path = candle_path(tmp_path, "binance", "1d", "BTC/USDT")
    write_candles(path, src.head(10))

    def torn(table: object, where: object, **kwargs: object) -> None:
        where.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # the process is killed half way through the write

    monkeypatch.setattr(cache.pq, "write_table", torn)
    with pytest.raises(KeyboardInterrupt):
        write_candles(path, src)
    monkeypatch.undo()
    assert_frame_equal(read_candles(path), src.head(10))


def test_concurrent_readers_always_see_a_whole_file(tmp_path: Path, shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1h", "BTC_USDT")
    sizes = [20_000, 40_000, 63_900]
    path = candle_path(tmp_path, "binance", "1h", "BTC/USDT")
    write_candles(path, src.head(sizes[0]))
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                frame = read_candles(path)
                assert frame.height in sizes
                assert_frame_equal(frame, src.head(frame.height))
                seen.append(frame.height)
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(4):
        for n in sizes:
            write_candles(path, src.head(n))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert seen, "the readers never read"


def test_load_panel_on_shared_data(shared_data_dir: Path) -> None:
    panel = load_panel(shared_data_dir, "binance", "1d")
    assert len(panel.symbols) == 41 and panel.symbols[0] == "AAVE/USDT"
    btc = panel.symbols.index("BTC/USDT")
    src = source(shared_data_dir, "1d", "BTC_USDT")
    rows = np.searchsorted(panel.timestamps, src["timestamp"].to_numpy())
    np.testing.assert_array_equal(panel.close[rows, btc], src["close"].to_numpy())
    np.testing.assert_array_equal(panel.volume[rows, btc], src["volume"].to_numpy())
    # MATIC stops 2023-04-18 in the data: NaN afterwards, never the last price carried forward.
    matic = panel.symbols.index("MATIC/USDT")
    after = panel.timestamps > source(shared_data_dir, "1d", "MATIC_USDT")["timestamp"].max()
    assert after.any() and np.isnan(panel.close[after, matic]).all()
    assert np.all(np.diff(panel.timestamps) > 0)


def test_load_panel_union_timeline_with_nan_holes_and_window(shared_data_dir: Path) -> None:
    panel = load_panel(shared_data_dir, "binance", "1h", ["BTC/USDT", "SOL_USDT", "NOPE/USDT"],
                       start_ms=1_517_961_600_000, end_ms=1_518_220_800_000)  # 2018-02-07 .. 2018-02-10
    assert panel.symbols == ("BTC/USDT", "SOL/USDT", "NOPE/USDT")
    assert panel.timestamps[0] >= 1_517_961_600_000 and panel.timestamps[-1] <= 1_518_220_800_000
    assert np.isnan(panel.close[:, 1]).all() and np.isnan(panel.close[:, 2]).all()  # SOL not listed yet; no file
    # The 2018-02-08/09 outage: no row invents a candle, the timeline simply has no such hours.
    src = source(shared_data_dir, "1h", "BTC_USDT")
    inside = src.filter(pl.col("timestamp").is_between(1_517_961_600_000, 1_518_220_800_000))
    np.testing.assert_array_equal(panel.timestamps, inside["timestamp"].to_numpy())
    assert np.diff(panel.timestamps).max() > 3_600_000


def test_load_panel_on_cache_layout(tmp_path: Path, shared_data_dir: Path) -> None:
    for stem in ("BTC_USDT", "ETH_USDT"):
        src = source(shared_data_dir, "1d", stem).tail(30)
        write_candles(candle_path(tmp_path / "cache", "binance", "1d", stem), src)
    # Coverage sidecars and temp/lock files beside the data are not symbols.
    (tmp_path / "cache/binance/1d/BTC_USDT.coverage.json").write_text("{}")
    panel = load_panel(tmp_path / "cache", "binance", "1d")
    assert panel.symbols == ("BTC/USDT", "ETH/USDT") and panel.close.shape == (30, 2)
    assert panel.timestamps[-1] == 1_733_356_800_000 and np.diff(panel.timestamps).tolist() == [DAY] * 29


def test_empty_cache_gives_empty_panel(tmp_path: Path) -> None:
    panel = load_panel(tmp_path, "binance", "1d")
    assert panel.symbols == () and panel.close.shape == (0, 0)
    assert os.listdir(tmp_path) == []
