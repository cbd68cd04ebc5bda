"""The venue's data faces: the archive, market data and CoinGecko in the providers' real wire formats (checked
with a plain HTTP client), one market and one clock behind all of them and the trading API, faults on each."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import polars as pl
import pytest

from aura.exchange_sim import ExchangeSim, Fault, SimConfig, SimServer
from services.ingest.providers.base import CLOSE_GRACE_MS
from services.ingest.sync import sync
from services.ingest.sync_config import IngestConfig
from tests.exchange_sim.conftest import close_on, sync_client
from tests.ingest.conftest import DAY, HOUR, NOW, ms

pytestmark = pytest.mark.integration
MONTH = "/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-01.zip"


@pytest.fixture
def venue(shared_data_dir: Path) -> Iterator[SimServer]:
    """Every symbol of the shared data, the clock stopped at 2024-12-06 00:00 (the day after the data ends)."""
    with SimServer(config=SimConfig(data_dir=shared_data_dir, speed=0, now=NOW)) as server:
        yield server


def test_binance_klines_format_and_paging(venue: SimServer) -> None:
    api = venue.base_url
    rows = httpx.get(f"{api}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h",
                                                     "startTime": ms("2024-01-01"), "limit": 3}).json()
    assert len(rows) == 3 and all(len(r) == 12 for r in rows)
    first = rows[0]
    assert first[0] == ms("2024-01-01") and first[6] == ms("2024-01-01") + HOUR - 1
    assert all(isinstance(x, str) and len(x.split(".")[1]) == 8 for x in first[1:6])  # "42283.58000000"
    assert isinstance(first[8], int) and first[11] == "0"
    inclusive = httpx.get(f"{api}/api/v3/klines", params={
        "symbol": "BTCUSDT", "interval": "1d", "startTime": ms("2024-01-01"), "endTime": ms("2024-01-03")}).json()
    assert [r[0] for r in inclusive] == [ms("2024-01-01"), ms("2024-01-02"), ms("2024-01-03")]
    latest = httpx.get(f"{api}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d", "limit": 2}).json()
    assert [r[0] for r in latest] == [NOW - 2 * DAY, NOW - DAY]
    bad = httpx.get(f"{api}/api/v3/klines", params={"symbol": "NOPEUSDT", "interval": "1d"})
    assert bad.status_code == 400 and bad.json()["code"] == -1121


def test_binance_exchange_info_and_ticker(venue: SimServer) -> None:
    info = httpx.get(f"{venue.base_url}/api/v3/exchangeInfo").json()
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert btc["status"] == "TRADING" and btc["baseAsset"] == "BTC" and btc["quoteAsset"] == "USDT"
    assert {f["filterType"] for f in btc["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    assert next(s for s in info["symbols"] if s["symbol"] == "MATICUSDT")["status"] == "BREAK"  # data ends 2023
    tick = httpx.get(f"{venue.base_url}/api/v3/ticker/24hr", params={"symbol": "BTCUSDT"}).json()
    assert float(tick["quoteVolume"]) > 0 and tick["openTime"] == NOW - DAY
    venue.sim.market.delisted.add("DOGEUSDT")
    assert "DOGEUSDT" not in {s["symbol"] for s in httpx.get(f"{venue.base_url}/api/v3/exchangeInfo").json()["symbols"]}


def test_coingecko_formats(venue: SimServer) -> None:
    gecko = venue.coingecko_url
    ohlc = httpx.get(f"{gecko}/api/v3/coins/bitcoin/ohlc", params={"vs_currency": "usd", "days": "7"}).json()
    stamps = [r[0] for r in ohlc]
    assert all(len(r) == 5 for r in ohlc) and stamps == sorted(stamps)
    assert stamps[-1] == NOW and all(t % (4 * HOUR) == 0 for t in stamps)  # close times of 4h candles
    chart = httpx.get(f"{gecko}/api/v3/coins/bitcoin/market_chart",
                      params={"vs_currency": "usd", "days": "200"}).json()
    assert set(chart) == {"prices", "market_caps", "total_volumes"} and chart["prices"][-1][0] == NOW
    coins = httpx.get(f"{gecko}/api/v3/coins/list").json()
    assert {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin"} in coins
    assert httpx.get(f"{gecko}/api/v3/coins/not-a-coin/ohlc", params={"vs_currency": "usd",
                                                                      "days": "7"}).status_code == 404


def test_archive_publishes_a_period_only_once_it_is_over(venue: SimServer) -> None:
    day = "/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12-05.zip"
    assert httpx.get(venue.base_url + day).status_code == 200
    assert httpx.get(venue.base_url + MONTH.replace("2024-01", "2016-01")).status_code == 404  # before listing
    venue.sim.set_now(NOW - 1)  # 2024-12-05 is not over yet: its file does not exist, nor its candle
    assert httpx.get(venue.base_url + day).status_code == 404
    rows = httpx.get(f"{venue.base_url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d",
                                                               "limit": 1}).json()
    assert rows[0][0] == NOW - DAY and float(rows[0][5]) == 0  # forming: no volume, only the open and the price
    body = httpx.get(venue.base_url + MONTH).content
    checksum = httpx.get(venue.base_url + MONTH + ".CHECKSUM").text
    assert checksum == f"{hashlib.sha256(body).hexdigest()}  BTCUSDT-1d-2024-01.zip\n"


def test_faults_apply_to_the_archive_coingecko_and_market_data(venue: SimServer) -> None:
    base, faults = venue.base_url, venue.sim.faults
    faults.add(Fault("http_error", path="/data/*", status=503))
    assert httpx.get(base + MONTH).status_code == 503
    assert httpx.get(base + MONTH).status_code == 200  # one-shot
    faults.add(Fault("rate_limit", "GET", "/api/v3/klines", retry_after_s=3))
    limited = httpx.get(f"{base}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3" and limited.json()["code"] == -1003
    faults.add(Fault("drop", "GET", "/api/v3/exchangeInfo", count=2))
    for _ in range(2):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/api/v3/exchangeInfo")
    faults.add(Fault("timeout", path="/coingecko/*", delay_s=1.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{venue.coingecko_url}/api/v3/ping", timeout=0.3)
    # Content faults: a 200 whose content is wrong, each in the face it belongs to.
    faults.add(Fault("corrupt_zip", path="*BTCUSDT-1d-2024-01*", count=None))
    damaged = httpx.get(base + MONTH).content
    assert hashlib.sha256(damaged).hexdigest() in httpx.get(base + MONTH + ".CHECKSUM").text  # checksum matches
    with pytest.raises((zipfile.BadZipFile, zlib.error)):
        zipfile.ZipFile(io.BytesIO(damaged)).testzip()
    faults.clear()
    faults.add(Fault("wrong_shape", path="/coingecko/*/ohlc"))
    odd = httpx.get(f"{venue.coingecko_url}/api/v3/coins/bitcoin/ohlc", params={"vs_currency": "usd", "days": "7"})
    assert odd.status_code == 200 and isinstance(odd.json(), dict)
    # Faults posted as JSON to the control endpoint work the same (count null: until cleared).
    r = httpx.post(f"{base}/_sim/faults", json={"kind": "http_error", "path": "/data/*/daily/*", "status": 404,
                                                 "count": None})
    assert r.status_code == 200 and r.json()["faults"][0]["count"] is None
    assert httpx.get(base + "/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-2024-12-05.zip").status_code == 404
    assert httpx.get(base + MONTH).status_code == 200  # another path: not matched
    counts = venue.sim.request_counts()
    assert counts["GET /api/v3/exchangeInfo"] == 2 and counts["GET /coingecko/api/v3/ping"] == 1
    assert len(venue.sim.faults.requests("/data/")) == 6


def test_ingest_and_the_trading_api_see_the_same_prices_at_the_same_clock(tmp_path: Path,
                                                                          shared_data_dir: Path) -> None:
    """Ingest's providers pointed at the venue store exactly the candles the trading API prices from, the newest
    being the price bar; a market buy fills at that bar's close; nothing after the clock is ever served."""
    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT"),
                       start="2024-03-28")
    with SimServer(config=config) as venue:
        # Days of the current month come from the API's klines, older ones from the archive's monthly files.
        venue.sim.faults.add(Fault("http_error", path="/data/*/daily/*", status=404, count=None))
        cfg = IngestConfig(cache_root=tmp_path / "cache", archive_url=venue.base_url,
                           api_urls={"binance": venue.base_url}, coingecko_url=venue.coingecko_url,
                           ccxt_rate_limit_ms=1, coingecko_min_interval_s=0.0)
        client = sync_client(venue)
        for day in ("2024-03-28", "2024-03-29", "2024-03-30", "2024-03-31", "2024-04-01"):
            now = venue.sim.now_ms()
            report = sync(["BTC/USDT", "ETH/USDT"], "binance", "1d", ms("2024-02-01"), None, cfg,
                          now + CLOSE_GRACE_MS)
            assert report.complete
            assert "ccxt:binance" in report.symbols["BTC/USDT"].ranges_by_provider
            closes = {}
            for stem, pair in (("BTC_USDT", "BTCUSDT"), ("ETH_USDT", "ETHUSDT")):
                got = pl.read_parquet(cfg.cache_root / "binance" / "1d" / f"{stem}.parquet")
                assert got["timestamp"].max() == venue.sim.market.clock_ms == ms(day)  # the price bar, nothing after
                closes[pair] = got["close"][-1]
                assert closes[pair] == float(venue.sim.price(pair)) == close_on(config.data_dir, stem, day)
            ticker = client.fetch_ticker("BTC/USDT")["last"]
            order = client.create_order("BTC/USDT", "market", "buy", 0.001, None, {"newClientOrderId": f"b-{day}"})
            assert order["status"] == "closed" and order["average"] == ticker == closes["BTCUSDT"]
            venue.sim.advance(1)


def test_an_accelerated_clock_advances_the_market_bar_by_bar(shared_data_dir: Path) -> None:
    """At 43,200x real time a daily bar closes every two seconds of wall time: prices, klines and the archive
    move on together, one bar at a time (a controlled wall clock keeps it exact)."""
    wall = {"ms": 1_800_000_000_000}
    config = SimConfig(data_dir=shared_data_dir, symbols=("BTCUSDT",), start="2024-01-01", speed=43_200)
    sim = ExchangeSim(config, wall_ms=lambda: wall["ms"])
    candles = shared_data_dir / "binance" / "1d"
    with SimServer(sim) as venue:
        for n, day in enumerate(("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04")):
            assert sim.market.clock_ms == ms(day)
            assert sim.price("BTCUSDT") == Decimal(str(close_on(candles, "BTC_USDT", day)))
            last = httpx.get(f"{venue.base_url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d",
                                                                        "limit": 2}).json()
            assert [r[0] for r in last] == [ms(day), ms(day) + DAY]  # the price bar, then the one forming
            daily = f"/data/spot/daily/klines/BTCUSDT/1d/BTCUSDT-1d-{day}.zip"
            assert httpx.get(venue.base_url + daily).status_code == 200  # published: that day is over
            assert httpx.get(venue.base_url + daily.replace(day, "2024-01-05")).status_code == 404
            wall["ms"] += 1_000  # half a day later: still the same bar
            assert sim.market.clock_ms == ms(day)
            wall["ms"] += 1_000
            assert sim.now_ms() == ms("2024-01-02") + (n + 1) * DAY
    # And on the real clock: a daily bar every ~12 ms.
    with SimServer(config=SimConfig(data_dir=shared_data_dir, symbols=("BTCUSDT",), start="2024-01-01",
                                    speed=7_200_000)) as fast:
        first = fast.sim.market.clock_ms
        time.sleep(0.1)
        assert fast.sim.market.clock_ms >= first + 5 * DAY
