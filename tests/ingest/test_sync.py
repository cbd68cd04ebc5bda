"""The provider chain end to end: fall-through on faults, gaps kept as gaps, freshness, cross-checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from services.ingest.cache import coverage_path
from services.ingest.providers.base import CLOSE_GRACE_MS, interval_ms
from services.ingest.sync import sync
from services.ingest.sync_config import IngestConfig
from shared.config import Settings
from tests.ingest.conftest import DAY, NOW, NOW_SYNC, SETTLED, T2017, cached, ms, other_venue, source

pytestmark = pytest.mark.integration

SINCE = ms("2024-01-01")


def assert_source_from(got: pl.DataFrame, src: pl.DataFrame, start: int) -> None:
    """From ``start`` on the cache is the source exactly; before it (lookback padding) a real slice of it."""
    assert_frame_equal(got.filter(pl.col("timestamp") >= start), src.filter(pl.col("timestamp") >= start))
    before = got.filter(pl.col("timestamp") < start)
    assert_frame_equal(before, src.join(before.select("timestamp"), on="timestamp", how="semi"))
    assert before.height <= 10


def btc(shared: Path) -> pl.DataFrame:
    return source(shared, "1d", "BTC_USDT")


@pytest.mark.parametrize("fault", ["corrupt_zip", "encrypted_flag", "bad_checksum"])
def test_bad_archive_file_rejected_and_next_provider_used(fault, make_config, archive, api, gecko,
                                                          shared_data_dir: Path, caplog) -> None:
    archive.fault(fault, "BTCUSDT-1d-2024-03")
    cfg = make_config()
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)
    assert rep.ranges_by_provider["ccxt:binance"] == [(ms("2024-03-01"), ms("2024-04-01"))]
    assert rep.added_by_provider["ccxt:binance"] == 31 and rep.complete
    assert any(r.tag == "DATA_REJECT" and "2024-03" in r.getMessage() for r in caplog.records)
    assert gecko.total == 0  # the tail had it: the fallback was never bothered


def test_file_in_an_unknown_time_unit_is_refused_alone(make_config, archive, api, shared_data_dir: Path,
                                                       caplog) -> None:
    archive.fault("seconds_timestamps", "BTCUSDT-1d-2024-05")
    cfg = make_config()
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)
    assert rep.ranges_by_provider["ccxt:binance"] == [(ms("2024-05-01"), ms("2024-06-01"))]  # only May replaced
    assert any(r.tag == "DATA_REJECT" and "BTCUSDT-1d-2024-05" in r.getMessage() for r in caplog.records)


def test_rejected_candle_is_asked_from_the_next_provider(make_config, shared_data_dir: Path, archive,
                                                         gecko) -> None:
    bad_day = ms("2024-11-20")
    src = source(shared_data_dir, "1d", "ETH_USDT")
    archive.fault("http_error", status=404)
    with other_venue(shared_data_dir) as bad_api:  # its exchange API sends an impossible candle
        bad_api.sim.store.set("1d", "ETH_USDT", src.with_columns(  # high below low on one day: rejected
            high=pl.when(pl.col("timestamp") == bad_day).then(pl.col("low") * 0.5).otherwise(pl.col("high"))))
        cfg = make_config(api_urls={"binance": bad_api.base_url})
        report = sync(["ETH/USDT"], "binance", "1d", ms("2024-11-10"), None, cfg, NOW_SYNC)
    rep = report.symbols["ETH/USDT"]
    assert rep.issues == {"reject.high_below_low": 1} and report.counters["reject.high_below_low"] == 1
    assert rep.ranges_by_provider["coingecko"] == [(bad_day, bad_day + DAY)] and rep.complete
    row = cached(cfg, "1d", "ETH_USDT").filter(pl.col("timestamp") == bad_day)
    assert row["high"][0] == src.filter(pl.col("timestamp") == bad_day)["high"][0]  # the real one, from CoinGecko
    assert gecko.counts["ohlc"] == 1


@pytest.mark.parametrize("fault", [{"kind": "drop"}, {"kind": "http_error", "status": 500},
                                   {"kind": "rate_limit"}], ids=["down", "500", "429"])
def test_archive_unusable_falls_through_to_tail(fault, make_config, archive, api, shared_data_dir: Path) -> None:
    archive.fault(**fault)
    cfg = make_config()
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)
    rep = report.symbols["BTC/USDT"]
    assert list(rep.ranges_by_provider) == ["ccxt:binance"] and rep.complete


def test_archive_and_tail_down_coingecko_fills_recent_days_without_volume(make_config, venue, archive, api, gecko,
                                                                          shared_data_dir: Path) -> None:
    archive.fault("drop")
    api.fault("rate_limit", retry_after_s=1)
    venue.sim.set_now(SETTLED)
    cfg = make_config()
    start = NOW - 20 * DAY
    report = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED)
    rep = report.symbols["ETH/USDT"]
    got = cached(cfg, "1d", "ETH_USDT")
    src = source(shared_data_dir, "1d", "ETH_USDT").filter(pl.col("timestamp") >= start)
    assert_frame_equal(got.filter(pl.col("timestamp") >= start).drop("volume"), src.drop("volume"))
    assert got["volume"].is_nan().all()
    assert list(rep.ranges_by_provider) == ["coingecko"] and rep.flags == {"coingecko": ["no_volume"]}
    assert rep.complete  # every candle is there (from the fallback, flagged)
    assert api.counts["exchangeInfo"] == 1 and api.counts["klines"] == 0  # 429 on load_markets: no hammering


def test_everyone_down_leaves_pending_gaps_and_invents_nothing(make_config, archive, api, gecko) -> None:
    for face in (archive, api, gecko):
        face.fault("drop")
    cfg = make_config()
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert not report.complete and rep.rows == 0 and rep.error is None
    assert [(g.start, g.end, g.confirmed) for g in rep.gaps] == [(SINCE, NOW, False)]
    notes = " ".join(rep.gaps[0].by)
    assert "binance_archive: network" in notes and "ccxt:binance" in notes and "coingecko" in notes
    assert not (cfg.cache_root / "binance/1d/BTC_USDT.parquet").exists()


def test_concurrent_syncs_of_one_symbol_lose_nothing(make_config, shared_data_dir: Path) -> None:
    import threading

    cfg = make_config(providers=("archive",))
    windows = [(ms("2021-01-01"), ms("2021-12-31")), (ms("2023-01-01"), ms("2023-12-31"))]
    reports = []
    threads = [threading.Thread(target=lambda w=w: reports.append(
        sync(["BTC/USDT"], "binance", "1d", w[0], w[1], cfg, NOW_SYNC))) for w in windows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 2 and all(r.complete for r in reports)
    got = cached(cfg, "1d", "BTC_USDT")
    src = btc(shared_data_dir)
    for start, end in windows:  # both writers' rows are there: the per-symbol lock serialised them
        assert_frame_equal(got.filter(pl.col("timestamp").is_between(start, end)),
                           src.filter(pl.col("timestamp").is_between(start, end)))
    sidecar = json.loads(coverage_path(cfg.cache_root / "binance/1d/BTC_USDT.parquet").read_text())
    assert sidecar["rows"] == got.height


def test_a_down_provider_is_not_hammered(make_config, archive, api, gecko) -> None:
    for face in (archive, api, gecko):
        face.fault("drop")
    cfg = make_config(archive_workers=2)
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    report = sync(symbols, "binance", "1d", NOW - 20 * DAY, None, cfg, SETTLED)
    first, *others = (report.symbols[s] for s in symbols)
    # Each provider fails once (plus what was already in flight), then is left alone for the cooldown.
    assert archive.total <= 2 and api.total == 1 and gecko.total == 1
    assert all(r.request_count == 0 for r in others) and first.request_count == archive.total + 2
    assert any("not asked" in note for r in others for g in r.gaps for note in g.by)
    assert not report.complete


def test_gap_nobody_has_stays_a_confirmed_gap(make_config, data, archive, api, gecko,
                                              shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1d", "BTC_USDT")
    hole = (ms("2024-11-10"), ms("2024-11-13"))  # three days the exchange "never produced"
    holed = src.filter(~pl.col("timestamp").is_between(hole[0], hole[1] - 1))
    data.set("1d", "BTC_USDT", holed)
    cfg = make_config()
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), holed, SINCE)
    gaps = [(g.start, g.end, g.confirmed, g.by) for g in rep.gaps]
    assert gaps == [(hole[0], hole[1], True, ("binance_archive", "ccxt:binance"))]
    assert rep.complete
    # CoinGecko has those days (it is another source) but the exchange said "no candle": not asked, not filled.
    assert gecko.total == 0


def test_unconfirmed_gap_is_pending_then_retried_alone(make_config, data, archive, api,
                                                       shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1d", "BTC_USDT")
    hole = (ms("2024-06-10"), ms("2024-06-12"))
    data.set("1d", "BTC_USDT", src.filter(~pl.col("timestamp").is_between(hole[0], hole[1] - 1)))
    api.fault("http_error", status=500)  # the archive says "no candle", but the exchange API cannot be asked
    cfg = make_config(providers=("archive", "tail"))
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert not rep.complete
    assert [(g.start, g.end, g.confirmed) for g in rep.gaps] == [(hole[0], hole[1], False)]
    assert any("ccxt:binance" in note for note in rep.gaps[0].by)

    api.clear_faults()
    archive.reset_counts()
    api.reset_counts()
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert rep.complete and [(g.start, g.end, g.confirmed) for g in rep.gaps] == [(hole[0], hole[1], True)]
    # Only the pending range was asked again: June's archive file, then one klines page.
    assert archive.counts["zip"] == 1 and "2024-06" in archive.paths[-1]
    assert api.counts["klines"] == 1


def test_forming_candle_never_stored(make_config, venue, archive, api, shared_data_dir: Path) -> None:
    now = ms("2024-12-05T12:00")
    venue.sim.set_now(now)
    archive.fault("http_error", "/daily/", status=404)  # today's days are not in the archive yet: the tail serves them
    cfg = make_config()
    report = sync(["BTC/USDT"], "binance", "1d", ms("2024-11-01"), None, cfg, now)
    got = cached(cfg, "1d", "BTC_USDT")
    assert got["timestamp"].max() == ms("2024-12-04")  # the 2024-12-05 candle is still forming at 12:00
    rep = report.symbols["BTC/USDT"]
    assert rep.forming_dropped == 1 and rep.complete
    assert rep.ranges_by_provider["ccxt:binance"] == [(ms("2024-12-01"), ms("2024-12-05"))]
    assert any("klines" in p and "endTime" not in p for p in api.paths)  # asked open-ended, like a live tail
    assert_frame_equal(got.filter(pl.col("timestamp") >= ms("2024-12-01")),
                       source(shared_data_dir, "1d", "BTC_USDT").filter(
                           pl.col("timestamp").is_between(ms("2024-12-01"), ms("2024-12-04"))))


def test_second_sync_makes_zero_requests(make_config, archive, api, gecko) -> None:
    cfg = make_config()
    first = sync(["BTC/USDT", "SOL/USDT"], "binance", "1d", T2017, None, cfg, NOW_SYNC)
    assert first.complete and first.requests > 0
    for face in (archive, api, gecko):
        face.reset_counts()
    second = sync(["BTC/USDT", "SOL/USDT"], "binance", "1d", T2017, None, cfg, NOW_SYNC)
    assert second.complete and second.requests == 0 and second.rows_added == 0
    assert archive.total == api.total == gecko.total == 0
    # Later in the same day nothing new has closed: still zero.
    third = sync(["BTC/USDT", "SOL/USDT"], "binance", "1d", T2017, None, cfg, NOW + 23 * 3_600_000)
    assert third.requests == 0 and archive.total == api.total == 0


def test_incremental_sync_asks_only_for_new_days(make_config, venue, data, archive, api,
                                                 shared_data_dir: Path) -> None:
    full = source(shared_data_dir, "1d", "BTC_USDT")
    cfg = make_config()
    venue.sim.set_now(ms("2024-12-03"))
    data.set("1d", "BTC_USDT", full.filter(pl.col("timestamp") < ms("2024-12-03")))
    assert sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, ms("2024-12-03") + CLOSE_GRACE_MS).complete
    archive.reset_counts()
    api.reset_counts()
    data.set("1d", "BTC_USDT", full)
    venue.sim.set_now(NOW)
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    assert report.complete and report.symbols["BTC/USDT"].rows_added == 3
    zips = sorted(p.rsplit("/", 1)[-1] for p in archive.paths if p.endswith(".zip"))
    # Three daily files: lookback padding never costs the archive an extra file.
    assert zips == [f"BTCUSDT-1d-2024-12-0{d}.zip" for d in range(3, 6)]
    assert api.total == 0
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)


def test_overlap_disagreement_logged_and_counted(make_config, shared_data_dir: Path, venue, archive,
                                                 caplog) -> None:
    # A second exchange API whose data differs on one day: asked for the padding, it disagrees with the cache.
    src = source(shared_data_dir, "1d", "BTC_USDT")
    bad_day = ms("2024-11-28")
    with other_venue(shared_data_dir) as api2:
        # Still a valid candle (close moved to the day's low): validation passes it, the cross-check sees it.
        api2.sim.store.set("1d", "BTC_USDT", src.with_columns(
            close=pl.when(pl.col("timestamp") == bad_day).then(pl.col("low")).otherwise(pl.col("close"))))
        cfg = make_config(api_urls={"binance": api2.base_url})
        venue.sim.set_now(ms("2024-12-03"))
        sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, ms("2024-12-03"))
        venue.sim.set_now(NOW)
        archive.fault("http_error", "/daily/", status=404)  # the new days must come from the tail, with padding
        with caplog.at_level(logging.WARNING, logger="aura.ingest"):
            report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert rep.disagreements == 1 and report.counters["disagreements"] == 1
    line = [r for r in caplog.records if getattr(r, "tag", None) == "DATA_DISAGREE"]
    assert len(line) == 1 and "close" in line[0].getMessage() and "2024-11-28" in line[0].getMessage()
    kept = cached(cfg, "1d", "BTC_USDT").filter(pl.col("timestamp") == bad_day)["close"][0]
    assert kept == src.filter(pl.col("timestamp") == bad_day)["close"][0]  # the archive's value stays


def test_cross_venue_overlap_is_checked_loosely(make_config, shared_data_dir: Path, archive, api) -> None:
    four_h = source(shared_data_dir, "4h", "BTC_USDT")
    early = ms("2024-12-03T01:00")
    with other_venue(shared_data_dir, early) as usd:  # CoinGecko's USD aggregate: 0.1% off Binance's USDT
        usd.sim.store.set("4h", "BTC_USDT", four_h.with_columns(
            *(pl.col(c) * 1.001 for c in ("open", "high", "low", "close"))))
        cfg = make_config(coingecko_url=usd.coingecko_url)
        archive.fault("http_error", status=404)
        api.fault("drop")
        first = sync(["BTC/USDT"], "binance", "1d", ms("2024-11-20"), None, cfg, early)
        assert list(first.symbols["BTC/USDT"].ranges_by_provider) == ["coingecko"]
        api.clear_faults()
        second = sync(["BTC/USDT"], "binance", "1d", ms("2024-11-20"), None, cfg, SETTLED)
    rep = second.symbols["BTC/USDT"]
    # The tail's padding overlapped ten CoinGecko days, and it replaced the three of the last week (provisional):
    # 0.1% apart is normal across venues, not an alarm.
    assert rep.disagreements == 0 and rep.complete and rep.rows_replaced == 3
    # (CoinGecko's 14-day answer also covered 2024-11-19: kept as lookback history)
    assert rep.ranges_by_provider == {"coingecko": [(ms("2024-11-19"), ms("2024-11-30"))],
                                      "ccxt:binance": [(ms("2024-11-30"), NOW)]}


def test_second_tail_exchange_fills_when_the_own_exchange_is_down(make_config, shared_data_dir: Path, archive,
                                                                  api) -> None:
    archive.fault("http_error", status=404)
    api.fault("drop")
    with other_venue(shared_data_dir) as us:
        cfg = make_config(tail_exchanges=("binanceus",), api_urls={"binance": api.url, "binanceus": us.base_url})
        report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    rep = report.symbols["BTC/USDT"]
    assert list(rep.ranges_by_provider) == ["ccxt:binanceus"] and rep.complete
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)


def test_coingecko_429_backs_off_with_retry_after(make_config, venue, archive, api, gecko) -> None:
    archive.fault("drop")
    api.fault("drop")
    gecko.fault("rate_limit", count=2, retry_after_s=7)
    venue.sim.set_now(SETTLED)
    cfg = make_config()
    report = sync(["BTC/USDT"], "binance", "1d", NOW - 10 * DAY, None, cfg, SETTLED)
    assert report.complete and gecko.counts["ohlc"] == 3
    assert cfg.sleep.__self__ == make_config.sleeps  # the injected sleep recorded the waits
    assert make_config.sleeps == [7.0, 7.0]


def test_stale_sidecar_is_rebuilt_without_losing_rows(make_config, archive, api, shared_data_dir: Path,
                                                       caplog) -> None:
    cfg = make_config()
    sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    path = cfg.cache_root / "binance/1d/BTC_USDT.parquet"
    coverage_path(path).write_text("{ torn")
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC)
    assert any(getattr(r, "tag", None) == "CACHE_MISMATCH" for r in caplog.records)
    assert report.complete and report.symbols["BTC/USDT"].rows_added == 0
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)
    assert json.loads(coverage_path(path).read_text())["rows"] == cached(cfg, "1d", "BTC_USDT").height


def test_settings_like_config_and_until(tmp_path: Path, archive, api, monkeypatch, shared_data_dir: Path) -> None:
    monkeypatch.setenv("AURA_BINANCE_ARCHIVE_URL", archive.url)
    monkeypatch.setenv("AURA_BINANCE_API_URL", api.url)
    settings = Settings(home=str(tmp_path / "home"))
    report = sync(["ETH/USDT"], "binance", "1d", ms("2021-01-01"), ms("2021-12-31"), settings, NOW_SYNC)
    cfg = IngestConfig.coerce(settings)
    assert cfg.cache_root == tmp_path / "home" / "cache" and cfg.api_urls["binance"] == api.url
    got = cached(cfg, "1d", "ETH_USDT")
    assert got["timestamp"].max() == ms("2021-12-31") and report.complete
    assert report.symbols["ETH/USDT"].window == (ms("2021-01-01"), ms("2022-01-01"))


def test_candle_still_forming_on_a_lagging_exchange_is_not_taken(make_config, venue, shared_data_dir: Path) -> None:
    """The exchange's clock trails ours by 300 ms: right after the boundary it still sends the candle as forming
    (with its open and the price so far only: not the final numbers)."""
    boundary = ms("2024-12-05T12:00")
    hour = boundary - 3_600_000
    real = source(shared_data_dir, "1h", "ETH_USDT").filter(pl.col("timestamp") < boundary)
    venue.sim.set_now(boundary - 300)
    cfg = make_config(providers=("tail",))
    start = boundary - 2 * DAY
    early = sync(["ETH/USDT"], "binance", "1h", start, None, cfg, boundary + 100).symbols["ETH/USDT"]
    assert early.complete and early.forming_dropped == 1
    assert cached(cfg, "1h", "ETH_USDT")["timestamp"].max() == hour - 3_600_000  # 11:00 is not taken yet
    # Once the grace is over the exchange has finished the candle, and its final numbers are what is stored.
    venue.sim.set_now(boundary + CLOSE_GRACE_MS)
    later = sync(["ETH/USDT"], "binance", "1h", start, None, cfg, boundary + CLOSE_GRACE_MS).symbols["ETH/USDT"]
    assert later.complete and later.rows_added == 1
    assert_frame_equal(cached(cfg, "1h", "ETH_USDT").filter(pl.col("timestamp") >= start),
                       real.filter(pl.col("timestamp") >= start))


def test_within_the_close_grace_a_fresh_cache_makes_zero_requests(make_config, archive, api, gecko) -> None:
    cfg = make_config()
    two_days_before = NOW - 2 * DAY  # the cache holds every candle up to and including this one
    assert sync(["BTC/USDT"], "binance", "1d", SINCE, two_days_before, cfg, NOW_SYNC).complete
    for face in (archive, api, gecko):
        face.reset_counts()
    # One second after midnight the 2024-12-05 candle does not count as closed yet: nothing to ask for.
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW + 1_000)
    assert report.complete and report.requests == 0 and report.last_closed_ms == two_days_before
    assert archive.total == api.total == gecko.total == 0


def test_coingecko_answer_of_the_wrong_shape_fails_coingecko_only(make_config, venue, archive, api, gecko,
                                                                  shared_data_dir: Path, caplog) -> None:
    gecko.fault("wrong_shape", "/ohlc")
    venue.sim.set_now(SETTLED)
    cfg = make_config(providers=("coingecko", "tail"))  # CoinGecko asked first: its failure must fall through
    start = NOW - 20 * DAY
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        report = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED)
    rep = report.symbols["ETH/USDT"]
    assert rep.error is None and rep.complete and list(rep.ranges_by_provider) == ["ccxt:binance"]
    assert gecko.counts["ohlc"] == 1
    assert any(r.tag == "DATA_REJECT" and "coingecko" in r.getMessage() for r in caplog.records)
    # Last in the chain, the same answer leaves a pending gap that says why, not an errored symbol.
    archive.fault("http_error", "/daily/", status=404)
    api.fault("http_error", status=500)
    later = sync(["ETH/USDT"], "binance", "1d", start, None, make_config(cache_root=cfg.cache_root / "x"), SETTLED)
    rep = later.symbols["ETH/USDT"]
    assert rep.error is None and not rep.complete
    assert any("coingecko: unusable answer" in why for g in rep.pending_gaps for why in g.by)


class _Broken:
    """A provider with a bug: it raises instead of reporting trouble in ``failed``."""

    name = "broken"

    def authoritative(self, exchange: str) -> bool:
        return True

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        return True

    def fetch(self, request: object) -> object:
        raise KeyError("bug")

    def close(self) -> None:
        pass


def test_a_provider_that_raises_fails_alone_and_loudly(make_config, archive, api, shared_data_dir: Path,
                                                       caplog) -> None:
    from services.ingest.sync_config import build_providers

    cfg = make_config()
    chain = [_Broken(), *build_providers(cfg, "binance")]
    with caplog.at_level(logging.ERROR, logger="aura.ingest"):
        report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW_SYNC, providers=chain)  # type: ignore[list-item]
    rep = report.symbols["BTC/USDT"]
    assert rep.error is None and rep.complete and "broken" not in rep.ranges_by_provider
    assert_source_from(cached(cfg, "1d", "BTC_USDT"), btc(shared_data_dir), SINCE)
    assert report.counters["provider_errors.broken"] == 1
    [line] = [r for r in caplog.records if r.tag == "PROVIDER_ERROR"]
    assert "broken" in line.getMessage() and "KeyError" in line.getMessage() and line.exc_info is not None


@pytest.mark.parametrize("timeframe", ["4h", "1d"])
def test_conflicting_coingecko_duplicates_are_rejected_loudly(timeframe, make_config, venue, archive, api, gecko,
                                                              caplog) -> None:
    archive.fault("drop")
    api.fault("http_error", status=500)
    gecko.fault("duplicate_conflict", "/ohlc")
    venue.sim.set_now(SETTLED)
    cfg = make_config()
    with caplog.at_level(logging.WARNING, logger="aura.ingest"):
        report = sync(["ETH/USDT"], "binance", timeframe, NOW - 10 * DAY, None, cfg, SETTLED)
    rep = report.symbols["ETH/USDT"]
    assert report.counters["reject.duplicate_conflict"] == 1 and rep.issues == {"reject.duplicate_conflict": 1}
    [line] = [r for r in caplog.records if r.tag == "DATA_REJECT"]
    assert "duplicate_conflict" in line.getMessage() and line.fields["provider"] == "coingecko"
    # Neither copy is stored: the candle stays a pending gap (asked again next time), the rest is filled.
    [gap] = rep.pending_gaps
    assert gap.start == line.fields["ts"] and gap.end - gap.start == interval_ms(timeframe)
    assert "coingecko: rejected candle" in gap.by
    assert gap.start not in cached(cfg, timeframe, "ETH_USDT")["timestamp"].to_list()


def _gecko_fill(make_config, archive, api, gecko) -> tuple[IngestConfig, int]:
    """Archive and API down at 01:00 after the 2024-12-05 close: CoinGecko fills the last 20 days (no volume)."""
    archive.fault("drop")
    api.fault("rate_limit", retry_after_s=1)
    gecko.venue.sim.set_now(SETTLED)
    cfg = make_config(provider_cooldown_s=0.0)
    start = NOW - 20 * DAY
    first = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED).symbols["ETH/USDT"]
    assert first.complete and list(first.ranges_by_provider) == ["coingecko"]
    for face in (archive, api, gecko):
        face.clear_faults()
        face.reset_counts()
    return cfg, start


def test_fallback_candles_are_replaced_once_the_exchange_is_back(make_config, archive, api, gecko,
                                                                 shared_data_dir: Path, caplog) -> None:
    cfg, start = _gecko_fill(make_config, archive, api, gecko)
    later = SETTLED + 3_600_000
    with caplog.at_level(logging.INFO, logger="aura.ingest"):
        rep = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, later).symbols["ETH/USDT"]
    week = ms("2024-11-30")  # the days opened within provisional_days (7) of the second sync
    assert rep.complete and rep.rows_replaced == 6 and rep.rows_added == 0 and rep.disagreements == 0
    assert list(rep.ranges_by_provider) == ["coingecko", "binance_archive"]
    assert rep.ranges_by_provider["coingecko"][-1][1] == week and rep.ranges_by_provider["binance_archive"] == [
        (week, NOW)]
    assert gecko.total == 0  # the fallback is not asked again for what it already supplied
    got = cached(cfg, "1d", "ETH_USDT")
    real = source(shared_data_dir, "1d", "ETH_USDT")
    assert_frame_equal(got.filter(pl.col("timestamp") >= week), real.filter(pl.col("timestamp") >= week))
    assert got.filter(pl.col("timestamp") < week)["volume"].is_nan().all()
    assert any(r.tag == "DATA_REPLACED" and "binance_archive" in r.getMessage() for r in caplog.records)
    # Nothing provisional left in the window: the next sync is free again.
    for face in (archive, api, gecko):
        face.reset_counts()
    again = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, later)
    assert again.requests == 0 and archive.total == api.total == gecko.total == 0


def test_a_fallback_candle_where_the_exchange_says_none_exists_is_dropped(make_config, shared_data_dir: Path,
                                                                         venue, archive, api, gecko, caplog) -> None:
    """The exchange had an outage day (no ETH candle on 2024-12-02) and its sources were down when asked, so
    CoinGecko filled it.  Back, the exchange's own sources answer that no candle exists there: the CoinGecko candle
    is dropped and the day is a confirmed gap, as in the exchange's data the backtest reads.  It was put back and,
    no longer provisional, kept for good with no volume (found by an audit)."""
    hole = ms("2024-12-02")
    src = source(shared_data_dir, "1d", "ETH_USDT")
    venue.sim.store.set("1d", "ETH_USDT", src.filter(pl.col("timestamp") != hole))
    with other_venue(shared_data_dir, SETTLED) as usd:  # CoinGecko: every day
        cfg = make_config(coingecko_url=usd.coingecko_url, provider_cooldown_s=0.0)
        archive.fault("drop")
        api.fault("drop")
        venue.sim.set_now(SETTLED)
        start = NOW - 20 * DAY
        first = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED).symbols["ETH/USDT"]
        assert first.complete and list(first.ranges_by_provider) == ["coingecko"]
        archive.clear_faults()
        api.clear_faults()
        with caplog.at_level(logging.WARNING, logger="aura.ingest"):
            rep = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED + 3_600_000).symbols["ETH/USDT"]
    got = cached(cfg, "1d", "ETH_USDT")
    assert got.filter(pl.col("timestamp") == hole).height == 0
    assert rep.complete and [(g.start, g.end, g.confirmed) for g in rep.gaps] == [(hole, hole + DAY, True)]
    assert any(r.tag == "DATA_REPLACED" and "1 fallback candle(s) dropped" in r.getMessage() for r in caplog.records)
    week = ms("2024-11-30")  # the other provisional days were replaced by the exchange's own candles
    assert not got.filter(pl.col("timestamp") >= week)["volume"].is_nan().any()
    again = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED + 3_600_000).symbols["ETH/USDT"]
    assert again.requests == {} and [(g.start, g.confirmed) for g in again.gaps] == [(hole, True)]  # nothing rebuilt


@pytest.mark.parametrize("sidecar", ["stale", "lost"])
def test_fallback_candles_stay_provisional_across_a_crash_between_the_two_writes(make_config, archive, api, gecko,
                                                                                 shared_data_dir: Path,
                                                                                 sidecar: str) -> None:
    """A crash (or a full disk) after the candles were written and before their sidecar: the next sync finds the
    sidecar stale (or gone) and rebuilds it from the rows.  The CoinGecko rows were then attributed to the cache, as
    the exchange's own, and never asked again: six days kept for good with no volume (found by an audit).  They stay
    provisional and are replaced once the exchange answers."""
    cfg, start = _gecko_fill(make_config, archive, api, gecko)
    path = cfg.cache_root / "binance/1d/ETH_USDT.parquet"
    if sidecar == "stale":
        doc = json.loads(coverage_path(path).read_text())
        doc["rows"] += 1  # the row stamp of a sidecar older than the candles
        coverage_path(path).write_text(json.dumps(doc))
    else:
        coverage_path(path).unlink()
    rep = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED + 3_600_000).symbols["ETH/USDT"]
    assert rep.complete and rep.rows_replaced == 6, rep
    week = ms("2024-11-30")
    got = cached(cfg, "1d", "ETH_USDT")
    assert not got.filter(pl.col("timestamp") >= week)["volume"].is_nan().any()


def test_fallback_candles_are_kept_while_the_exchange_is_still_down(make_config, archive, api, gecko) -> None:
    cfg, start = _gecko_fill(make_config, archive, api, gecko)
    before = cached(cfg, "1d", "ETH_USDT")
    archive.fault("drop")
    api.fault("http_error", status=500)
    rep = sync(["ETH/USDT"], "binance", "1d", start, None, cfg, SETTLED + 3_600_000).symbols["ETH/USDT"]
    assert rep.complete and rep.rows_replaced == 0 and list(rep.ranges_by_provider) == ["coingecko"]
    assert archive.total > 0 and gecko.total == 0  # asked the exchange again, not the fallback
    assert_frame_equal(cached(cfg, "1d", "ETH_USDT"), before)
    sidecar = json.loads(coverage_path(cfg.cache_root / "binance/1d/ETH_USDT.parquet").read_text())
    assert sidecar["provisional"] == [[ms("2024-11-30"), NOW]]  # still wanted next time


def test_fallback_candles_are_asked_again_for_a_bounded_time(make_config, archive, api, gecko, caplog) -> None:
    cfg, start = _gecko_fill(make_config, archive, api, gecko)
    with caplog.at_level(logging.INFO, logger="aura.ingest"):
        report = sync(["ETH/USDT"], "binance", "1d", start, NOW - DAY, cfg, SETTLED + 8 * DAY)
    rep = report.symbols["ETH/USDT"]
    assert rep.complete and report.requests == 0 and list(rep.ranges_by_provider) == ["coingecko"]
    assert any(r.tag == "DATA_PROVISIONAL" for r in caplog.records)
    sidecar = json.loads(coverage_path(cfg.cache_root / "binance/1d/ETH_USDT.parquet").read_text())
    assert sidecar["provisional"] == []
