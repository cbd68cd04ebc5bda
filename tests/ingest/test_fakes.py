"""The fakes speak the providers' real wire formats (checked with a plain HTTP client, not our providers)."""

from __future__ import annotations

import httpx
import pytest

from tests.ingest.conftest import DAY, HOUR, NOW, ms

pytestmark = pytest.mark.integration


def test_binance_klines_format_and_paging(api) -> None:
    rows = httpx.get(f"{api.url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h",
                                                          "startTime": ms("2024-01-01"), "limit": 3}).json()
    assert len(rows) == 3 and all(len(r) == 12 for r in rows)
    first = rows[0]
    assert first[0] == ms("2024-01-01") and first[6] == ms("2024-01-01") + HOUR - 1
    assert all(isinstance(x, str) and len(x.split(".")[1]) == 8 for x in first[1:6])  # "42283.58000000"
    assert isinstance(first[8], int) and first[11] == "0"
    inclusive = httpx.get(f"{api.url}/api/v3/klines", params={
        "symbol": "BTCUSDT", "interval": "1d", "startTime": ms("2024-01-01"), "endTime": ms("2024-01-03")}).json()
    assert [r[0] for r in inclusive] == [ms("2024-01-01"), ms("2024-01-02"), ms("2024-01-03")]
    latest = httpx.get(f"{api.url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d", "limit": 2}).json()
    assert [r[0] for r in latest] == [NOW - 2 * DAY, NOW - DAY]
    bad = httpx.get(f"{api.url}/api/v3/klines", params={"symbol": "NOPEUSDT", "interval": "1d"})
    assert bad.status_code == 400 and bad.json()["code"] == -1121


def test_binance_exchange_info_and_ticker(api) -> None:
    info = httpx.get(f"{api.url}/api/v3/exchangeInfo").json()
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert btc["status"] == "TRADING" and btc["baseAsset"] == "BTC" and btc["quoteAsset"] == "USDT"
    assert {f["filterType"] for f in btc["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    tick = httpx.get(f"{api.url}/api/v3/ticker/24hr", params={"symbol": "BTCUSDT"}).json()
    assert float(tick["quoteVolume"]) > 0 and tick["openTime"] == NOW - DAY


def test_coingecko_formats(gecko) -> None:
    ohlc = httpx.get(f"{gecko.url}/api/v3/coins/bitcoin/ohlc", params={"vs_currency": "usd", "days": "7"}).json()
    stamps = [r[0] for r in ohlc]
    assert all(len(r) == 5 for r in ohlc) and stamps == sorted(stamps)
    assert stamps[-1] == NOW and all(t % (4 * HOUR) == 0 for t in stamps)  # close times of 4h candles
    chart = httpx.get(f"{gecko.url}/api/v3/coins/bitcoin/market_chart",
                      params={"vs_currency": "usd", "days": "200"}).json()
    assert set(chart) == {"prices", "market_caps", "total_volumes"} and chart["prices"][-1][0] == NOW
    coins = httpx.get(f"{gecko.url}/api/v3/coins/list").json()
    assert {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin"} in coins
    assert httpx.get(f"{gecko.url}/api/v3/coins/not-a-coin/ohlc", params={"vs_currency": "usd",
                                                                         "days": "7"}).status_code == 404


def test_fault_switches_and_counters(archive, gecko) -> None:
    path = "/data/spot/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-01.zip"
    assert httpx.get(archive.url + path).status_code == 200
    assert httpx.get(archive.url + path.replace("2024-01", "2016-01")).status_code == 404
    gecko.set_fault("429", times=1, retry_after="12")
    limited = httpx.get(f"{gecko.url}/api/v3/ping")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "12"
    assert httpx.get(f"{gecko.url}/api/v3/ping").status_code == 200  # the fault was for one request only
    archive.set_fault("down")
    with pytest.raises(httpx.HTTPError):
        httpx.get(archive.url + path)
    assert archive.counts == {"zip": 3} and gecko.total == 2
