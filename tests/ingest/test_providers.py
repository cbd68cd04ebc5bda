"""Each provider alone, through the real HTTP clients against the venue simulator: the cache equals the source."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from services.ingest.cache import coverage_path
from services.ingest.providers.ccxt_tail import make_exchange, rewrite_api_urls
from services.ingest.sync import sync
from services.ingest.validation import FLAG, REJECT, validate_candles
from tests.ingest.conftest import DAY, HOUR, NOW, NOW_SYNC, SETTLED, T2017, T2024, cached, ms, source

pytestmark = pytest.mark.integration


def test_archive_alone_full_daily_history(make_config, archive, api, gecko, shared_data_dir: Path) -> None:
    cfg = make_config(providers=("archive",))
    start = ms("2017-08-01")  # the listing month: its file proves there was nothing before 2017-08-17
    report = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert_frame_equal(cached(cfg, "1d", "BTC_USDT"), source(shared_data_dir, "1d", "BTC_USDT"))
    assert rep.complete and report.complete
    assert rep.ranges_by_provider == {"binance_archive": [(ms("2017-08-17"), NOW)]}
    assert [(g.start, g.end, g.confirmed) for g in rep.gaps] == [(start, ms("2017-08-17"), True)]
    # 88 complete months (2017-08..2024-11) + 5 December days, each zip with its CHECKSUM. Nobody else asked.
    assert archive.counts["zip"] == 93 and archive.counts["checksum"] == 93
    assert api.total == 0 and gecko.total == 0
    assert rep.requests == {"binance_archive": 186}


def test_archive_alone_hourly_with_exchange_outages(make_config, shared_data_dir: Path) -> None:
    cfg = make_config(providers=("archive",))
    start, end = ms("2018-01-01"), ms("2018-03-31T23:00")
    report = sync(["ETH/USDT"], "binance", "1h", start, end, cfg, NOW_SYNC)
    src = source(shared_data_dir, "1h", "ETH_USDT").filter(pl.col("timestamp").is_between(start, end))
    got = cached(cfg, "1h", "ETH_USDT")
    # Lookback padding may store a few candles before ``since``; inside the window it is the source exactly.
    assert_frame_equal(got.filter(pl.col("timestamp") >= start), src)
    rep = report.symbols["ETH/USDT"]
    missing = sorted(set(range(start, end + HOUR, HOUR)) - set(src["timestamp"].to_list()))
    gap_hours = sorted(t for g in rep.gaps for t in range(g.start, g.end, HOUR))
    assert gap_hours == missing and len(missing) >= 33  # the 2018-02-08/09 outage among them
    assert all(g.confirmed for g in rep.gaps) and rep.complete


def test_ccxt_tail_alone(make_config, archive, api, shared_data_dir: Path) -> None:
    cfg = make_config(providers=("tail",))
    report = sync(["BTC/USDT", "ETH/USDT"], "binance", "1d", T2017, None, cfg, NOW_SYNC)
    for stem in ("BTC_USDT", "ETH_USDT"):
        assert_frame_equal(cached(cfg, "1d", stem), source(shared_data_dir, "1d", stem))
    rep = report.symbols["BTC/USDT"]
    assert rep.complete and rep.ranges_by_provider == {"ccxt:binance": [(ms("2017-08-17"), NOW)]}
    # load_markets once (exchangeInfo only: spot, no currencies, no margin), then 1000-candle pages.
    assert api.counts["exchangeInfo"] == 1 and api.counts["klines"] == 6
    assert archive.total == 0
    assert all("limit=1000" in p for p in api.paths if "klines" in p)


def test_ccxt_tail_hourly_paginates_exactly(make_config, shared_data_dir: Path) -> None:
    cfg = make_config(providers=("tail",), lookback_bars=0)
    start, end = ms("2024-01-01"), ms("2024-03-31T23:00")
    sync(["SOL/USDT"], "binance", "1h", start, end, cfg, NOW_SYNC)
    src = source(shared_data_dir, "1h", "SOL_USDT").filter(pl.col("timestamp").is_between(start, end))
    assert_frame_equal(cached(cfg, "1h", "SOL_USDT"), src)


def test_coingecko_alone_daily_from_4h_pieces_without_volume(make_config, venue, archive, api, gecko,
                                                             shared_data_dir: Path) -> None:
    cfg = make_config(providers=("coingecko",))
    start = NOW - 29 * DAY
    # At midnight the last 4h piece of 2024-12-05 has just closed: CoinGecko may not have settled it yet.
    early = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC).symbols["BTC/USDT"]
    assert early.last_ms == NOW - 2 * DAY and [(g.start, g.confirmed) for g in early.gaps] == [(NOW - DAY, False)]
    assert gecko.paths == ["/api/v3/coins/bitcoin/ohlc?vs_currency=usd&days=30"]
    venue.sim.set_now(SETTLED)
    gecko.reset_counts()
    report = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, SETTLED)
    got = cached(cfg, "1d", "BTC_USDT")
    src = source(shared_data_dir, "1d", "BTC_USDT").filter(pl.col("timestamp") >= start - 10 * DAY)
    assert got.height >= 29 and got["timestamp"].max() == NOW - DAY
    expected = src.filter(pl.col("timestamp").is_in(got["timestamp"].to_list()))
    assert_frame_equal(got.drop("volume"), expected.drop("volume"))  # OHLC exact from six real 4h candles
    assert got["volume"].is_nan().all()  # no volume, and the data says so
    rep = report.symbols["BTC/USDT"]
    assert rep.flags == {"coingecko": ["no_volume"]} and rep.complete
    sidecar = json.loads(coverage_path(cfg.cache_root / "binance/1d/BTC_USDT.parquet").read_text())
    assert sidecar["flags"] == {"coingecko": ["no_volume"]}
    assert gecko.paths == ["/api/v3/coins/bitcoin/ohlc?vs_currency=usd&days=7"]  # only the pending day asked
    assert archive.total == 0 and api.total == 0


def test_coingecko_alone_4h_and_nothing_older_than_its_window(make_config, venue, shared_data_dir: Path) -> None:
    cfg = make_config(providers=("coingecko",), lookback_bars=0)
    venue.sim.set_now(SETTLED)
    report = sync(["ETH/USDT"], "binance", "4h", ms("2024-01-01"), None, cfg, SETTLED)
    got = cached(cfg, "4h", "ETH_USDT")
    src = source(shared_data_dir, "4h", "ETH_USDT").filter(pl.col("timestamp") >= NOW - 30 * DAY)
    assert_frame_equal(got.drop("volume"), src.drop("volume"))
    rep = report.symbols["ETH/USDT"]
    # Everything before CoinGecko's 30-day window is a pending gap: nobody could answer, nothing invented.
    assert not rep.complete
    assert [(g.start, g.confirmed) for g in rep.gaps] == [(ms("2024-01-01"), False)]
    assert rep.gaps[0].end == NOW - 30 * DAY and "coingecko: does not have it" in rep.gaps[0].by


def test_rewrite_api_urls_points_every_endpoint_at_the_base() -> None:
    api = {"public": "https://api.binance.com/api/v3", "sapi": "https://api.binance.com/sapi/v1",
           "nested": {"x": "https://fapi.binance.com/fapi/v1"}}
    out = rewrite_api_urls(api, "http://127.0.0.1:9/prefix")
    assert out == {"public": "http://127.0.0.1:9/prefix/api/v3", "sapi": "http://127.0.0.1:9/prefix/sapi/v1",
                   "nested": {"x": "http://127.0.0.1:9/prefix/fapi/v1"}}
    ex = make_exchange("binance", api_url="http://127.0.0.1:9")
    assert ex.urls["api"]["public"] == "http://127.0.0.1:9/api/v3" and ex.enableRateLimit


def test_coingecko_ohlc_conversion_needs_six_pieces() -> None:
    from services.ingest.providers.coingecko import ohlc_to_candles

    day = T2024
    rows = [[day + (i + 1) * 4 * HOUR, 10.0 + i, 20.0 + i, 5.0 + i, 11.0 + i] for i in range(6)]
    rows += [[day + DAY + 4 * HOUR, 1.0, 2.0, 0.5, 1.5]]  # next day: only one piece -> no candle
    rows += [[day + DAY + 4 * HOUR + 123, 1.0, 2.0, 0.5, 1.5]]  # a partial "now" point: not a candle
    out = ohlc_to_candles(rows, "1d")
    assert out["timestamp"].to_list() == [day]
    assert out.row(0)[1:5] == (10.0, 25.0, 5.0, 16.0) and np.isnan(out["volume"][0])


def test_coingecko_duplicate_times_reach_validation_never_a_silent_pick() -> None:
    from services.ingest.providers.coingecko import ohlc_to_candles

    h4 = 4 * HOUR
    piece = [[T2024 + (i + 1) * h4, 10.0 + i, 20.0 + i, 5.0 + i, 11.0 + i] for i in range(6)]
    other = [T2024 + 3 * h4, 12.0, 30.0, 1.0, 29.0]  # a second, different third piece of 2024-01-01
    for timeframe, iv in (("4h", h4), ("1d", DAY)):
        conflicting = validate_candles(ohlc_to_candles([*piece, other], timeframe), iv, allow_nan_volume=True)
        [issue] = conflicting.issues
        assert (issue.kind, issue.action) == ("duplicate_conflict", REJECT)
        assert issue.timestamp == (T2024 + 2 * h4 if timeframe == "4h" else T2024)
        assert issue.timestamp not in conflicting.frame["timestamp"].to_list()
        identical = validate_candles(ohlc_to_candles([*piece, piece[2]], timeframe), iv, allow_nan_volume=True)
        assert [(i.kind, i.action) for i in identical.issues] == [("duplicate", FLAG)]
        assert_frame_equal(identical.frame, ohlc_to_candles(piece, timeframe))


def test_ccxt_tail_newest_candle_not_yet_published_stays_pending(make_config, api, shared_data_dir: Path) -> None:
    """Right after a close the exchange may answer without the candle that just closed: that short page is not
    an answer that the candle does not exist.  Taken as one, the candle became a confirmed gap, never asked
    again, and the symbol lacked its decision bar for good."""
    cfg = make_config(providers=("tail",), lookback_bars=0)
    start = NOW - 30 * DAY
    api.fault("lagging_klines", "klines")
    early = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC).symbols["BTC/USDT"]
    assert not early.complete and early.last_ms == NOW - 2 * DAY
    assert [(g.start, g.end, g.confirmed) for g in early.gaps] == [(NOW - DAY, NOW, False)]
    api.clear_faults()
    api.reset_counts()
    late = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC).symbols["BTC/USDT"]
    assert late.complete and late.last_ms == NOW - DAY and not late.gaps
    assert api.counts["klines"] == 1  # only the pending candle is asked again
    src = source(shared_data_dir, "1d", "BTC_USDT").filter(pl.col("timestamp") >= start)
    assert_frame_equal(cached(cfg, "1d", "BTC_USDT").filter(pl.col("timestamp") >= start), src)


def test_a_candle_the_api_confirmed_absent_is_kept_when_it_supplies_it_later(make_config, venue, api,
                                                                              shared_data_dir: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Three minutes after a close the klines answer still lacks the candle (an API that lagged past the settle
    time), so the slot is a confirmed gap.  On the next bar the sync's lookback padding gets that candle from the
    API: it is kept and the gap is gone.  Dropped, as it was, the hole stayed for good and took the pair out of the
    screen for a lookback's length, about 90 bars (found by an audit)."""
    cfg = make_config(providers=("tail",))  # the default padding: ten bars before what is missing
    start = NOW - 30 * DAY
    lagged = NOW - DAY + 180_000  # 2024-12-05 00:03: the 2024-12-04 candle closed three minutes ago
    venue.sim.set_now(lagged)
    api.fault("lagging_klines", "klines")
    first = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, lagged).symbols["BTC/USDT"]
    assert [(g.start, g.end, g.confirmed) for g in first.gaps] == [(NOW - 2 * DAY, NOW - DAY, True)]
    api.clear_faults()
    venue.sim.set_now(NOW_SYNC)
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        second = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC).symbols["BTC/USDT"]
    assert second.complete and not second.gaps
    src = source(shared_data_dir, "1d", "BTC_USDT").filter(pl.col("timestamp") >= start)
    assert_frame_equal(cached(cfg, "1d", "BTC_USDT").filter(pl.col("timestamp") >= start), src)
    late = [r for r in caplog.records if getattr(r, "tag", "") == "DATA_LATE"]
    assert len(late) == 1 and "supplied 1 candle(s) it had said did not exist, from 2024-12-04 00:00" in late[0].msg


def test_ccxt_tail_a_pair_that_stopped_trading_is_a_confirmed_gap_two_minutes_after_the_close(
        make_config, data, shared_data_dir: Path) -> None:
    """ETH's last three candles never came (the pair halted).  Right after the close its newest candle may only be
    late, so that one day stays pending; two minutes on, it is absent, and the gap is confirmed up to now, so a
    halted pair does not hold every cycle of the universe stale."""
    cfg = make_config(providers=("tail",), lookback_bars=0)
    eth = source(shared_data_dir, "1d", "ETH_USDT")
    data.set("1d", "ETH_USDT", eth.filter(pl.col("timestamp") < NOW - 3 * DAY))
    start = NOW - 30 * DAY
    early = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, NOW_SYNC).symbols["ETH/USDT"]
    assert not early.complete
    assert [(g.start, g.end, g.confirmed) for g in early.gaps] == [(NOW - 3 * DAY, NOW - DAY, True),
                                                                  (NOW - DAY, NOW, False)]
    late = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, NOW + 180_000).symbols["ETH/USDT"]
    assert late.complete and [(g.start, g.end, g.confirmed) for g in late.gaps] == [(NOW - 3 * DAY, NOW, True)]


def test_a_newest_candle_confirmed_absent_is_asked_again_within_its_bar(make_config, venue, api,
                                                                         shared_data_dir: Path) -> None:
    """Found by an audit: a candle the API still lacked three minutes after its close became a confirmed gap, and
    nothing asked for it again until the next bar closed; a held pair's cycle stayed stale all day though the API
    had the candle minutes later.  The newest bar's confirmed gap is asked again at each sync within that bar."""
    cfg = make_config(providers=("tail",))
    start = NOW - 30 * DAY
    lagged = NOW - DAY + 180_000  # the 2024-12-04 candle closed three minutes ago
    venue.sim.set_now(lagged)
    api.fault("lagging_klines", "klines")
    first = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, lagged).symbols["BTC/USDT"]
    assert [(g.start, g.end, g.confirmed) for g in first.gaps] == [(NOW - 2 * DAY, NOW - DAY, True)]
    api.clear_faults()
    api.fault("http_error", "klines", status=500)  # the re-ask fails: the earlier answer stands, nothing pending
    failed = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, lagged + 300_000).symbols["BTC/USDT"]
    assert failed.complete and [(g.start, g.end, g.confirmed) for g in failed.gaps] == [
        (NOW - 2 * DAY, NOW - DAY, True)]
    api.clear_faults()
    later = lagged + 600_000  # ten minutes later, the same bar
    venue.sim.set_now(later)
    api.reset_counts()
    again = sync(["BTC/USDT"], "binance", "1d", start, None, cfg, later).symbols["BTC/USDT"]
    assert again.complete and not again.gaps and api.counts["klines"] == 1
    closed = pl.col("timestamp").is_between(start, NOW - 2 * DAY)  # up to the candle that came late
    assert_frame_equal(cached(cfg, "1d", "BTC_USDT").filter(closed), source(shared_data_dir, "1d", "BTC_USDT")
                       .filter(closed))
