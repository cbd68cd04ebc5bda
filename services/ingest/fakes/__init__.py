"""Local HTTP servers speaking the real providers' formats, fed with the real candles of /work/shared/data.

Importable by tests and benchmarks::

    data = MarketData(shared_data_dir)
    with FakeBinanceArchive(data, now_ms) as archive, FakeBinanceApi(data, now_ms) as api:
        ...  # archive.url, api.url; archive.counts / api.total; archive.set_fault("404", match="2024-03")
"""

from services.ingest.fakes.archive import FakeBinanceArchive, build_kline_csv, build_zip, checksum_body
from services.ingest.fakes.binance_api import FakeBinanceApi
from services.ingest.fakes.coingecko import FakeCoinGecko
from services.ingest.fakes.market import MarketData
from services.ingest.fakes.server import FakeServer, Reply

__all__ = [
    "FakeBinanceApi",
    "FakeBinanceArchive",
    "FakeCoinGecko",
    "FakeServer",
    "MarketData",
    "Reply",
    "build_kline_csv",
    "build_zip",
    "checksum_body",
]
