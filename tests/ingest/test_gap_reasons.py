"""The reasons a pending gap gives: a source that could not be reached is never also said to lack the range."""

from __future__ import annotations

from pathlib import Path

from services.ingest.providers.base import FetchRequest, FetchResult
from services.ingest.sync import sync
from services.ingest.sync_config import IngestConfig

DAY = 86_400_000
NOW = 1_733_443_200_000  # 2024-12-06 00:00 UTC
SINCE = NOW - 40 * DAY  # ten days older than CoinGecko's 30-day window: the part it is silent about
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: refused at once on loopback, no network involved


class _Silent:
    """A fallback that is reached and answers, but with nothing for the range: it does not have it."""

    name = "silent"

    def authoritative(self, exchange: str) -> bool:
        return False

    def supports(self, exchange: str, symbol: str, timeframe: str) -> bool:
        return True

    def fetch(self, request: FetchRequest) -> FetchResult:
        return FetchResult(provider=self.name, requests=1)

    def close(self) -> None:
        pass


def _config(tmp_path: Path, providers: tuple[str, ...]) -> IngestConfig:
    return IngestConfig(cache_root=tmp_path / "cache", archive_url=UNREACHABLE, coingecko_url=UNREACHABLE,
                        api_urls={"binance": UNREACHABLE}, providers=providers, coingecko_min_interval_s=0.0,
                        coingecko_max_retries=0, ccxt_rate_limit_ms=1, http_timeout_s=2.0, sleep=lambda s: None)


def test_an_unreachable_source_is_not_also_said_to_lack_the_range(tmp_path: Path) -> None:
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, _config(tmp_path, ("coingecko",)), NOW)
    [gap] = report.symbols["BTC/USDT"].pending_gaps
    assert "coingecko: ConnectError" in gap.by
    assert not [why for why in gap.by if "does not have it" in why], gap.by


def test_a_source_that_answers_without_the_range_still_does_not_have_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ("coingecko",))
    report = sync(["BTC/USDT"], "binance", "1d", SINCE, None, cfg, NOW, providers=[_Silent()])  # type: ignore[list-item]
    [gap] = report.symbols["BTC/USDT"].pending_gaps
    assert gap.by == ("silent: does not have it",)
