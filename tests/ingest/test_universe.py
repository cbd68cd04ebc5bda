"""Universe: markets + 24h quote volume through ccxt, refreshed daily, delisted symbols kept and marked."""

from __future__ import annotations

import pytest

from services.ingest.universe import PEGGED_BASES, Universe, UniverseError, merge_universe, refresh_universe
from tests.ingest.conftest import DAY, NOW


@pytest.mark.integration
def test_refresh_daily_and_mark_delisted(make_config, venue, api) -> None:
    cfg = make_config()
    uni = refresh_universe("binance", cfg, NOW)
    assert api.counts == {"exchangeInfo": 1, "24hr": 1}
    active = uni.active()
    assert len(active) == 40 and active[0] == "BTC/USDT"  # the largest 24h quote volume first
    vols = [uni.entries[s].quote_volume_24h for s in active]
    assert vols == sorted(vols, reverse=True)
    # MATIC's data stops 2023-04: the exchange lists it as BREAK, so it is delisted but still known.
    matic = uni.entries["MATIC/USDT"]
    assert matic.delisted and not matic.active and "MATIC/USDT" in uni.delisted()

    api.reset_counts()
    assert refresh_universe("binance", cfg, NOW + DAY - 1).entries == uni.entries
    assert api.total == 0  # refreshed less than a day ago: no request

    venue.sim.market.delisted.add("DOGEUSDT")  # gone from exchangeInfo entirely
    later = refresh_universe("binance", cfg, NOW + DAY)
    doge = later.entries["DOGE/USDT"]
    assert doge.delisted and not doge.active and doge.delisted_ms == NOW + DAY
    assert doge.first_seen_ms == NOW  # history is kept
    assert "DOGE/USDT" not in later.active() and len(later.active()) == 39


@pytest.mark.integration
def test_refresh_failure_keeps_previous_or_raises(make_config, api) -> None:
    cfg = make_config()
    api.fault("drop")
    with pytest.raises(UniverseError):
        refresh_universe("binance", cfg, NOW)
    api.clear_faults()
    first = refresh_universe("binance", cfg, NOW)
    api.fault("http_error", status=500)
    again = refresh_universe("binance", cfg, NOW + 2 * DAY)
    assert again.refreshed_ms == NOW and again.entries == first.entries  # stale but usable, and says so


def test_merge_universe_relisting_clears_the_mark() -> None:
    def market(sym: str, active: bool = True) -> dict[str, object]:
        return {"symbol": sym, "base": sym.split("/")[0], "quote": "USDT", "spot": True, "active": active}

    tick = {"A/USDT": {"quoteVolume": 5.0}, "B/USDT": {"quoteVolume": 9.0}}
    u1 = merge_universe(None, [market("A/USDT"), market("B/USDT"), {**market("C/BTC"), "quote": "BTC"}], tick,
                        exchange="x", quote="USDT", now_ms=1)
    assert u1.active() == ["B/USDT", "A/USDT"] and "C/BTC" not in u1.entries
    u2 = merge_universe(u1, [market("B/USDT")], tick, exchange="x", quote="USDT", now_ms=2)
    assert u2.entries["A/USDT"].delisted and u2.entries["A/USDT"].delisted_ms == 2
    u3 = merge_universe(u2, [market("A/USDT"), market("B/USDT")], tick, exchange="x", quote="USDT", now_ms=3)
    a = u3.entries["A/USDT"]
    assert a.active and not a.delisted and a.delisted_ms is None and a.first_seen_ms == 1
    assert Universe.from_json(u3.to_json()) == u3


def test_pairs_pegged_to_a_currency_are_left_out_of_the_ranking() -> None:
    """USDC/USDT and FDUSD/USDT trade more than most coins: ranked by volume they would take universe slots
    (and sit on their moving average in the regime's breadth) with no momentum to rotate into."""
    markets = [{"symbol": f"{b}/USDT", "base": b, "quote": "USDT", "spot": True, "active": True}
               for b in ("BTC", "USDC", "FDUSD", "ETH", "EUR", "SOL")]
    volumes = {"USDC/USDT": 9e9, "FDUSD/USDT": 8e9, "BTC/USDT": 5e9, "ETH/USDT": 3e9, "EUR/USDT": 2e9,
               "SOL/USDT": 1e9}
    u = merge_universe(None, markets, {k: {"quoteVolume": v} for k, v in volumes.items()}, exchange="x",
                       quote="USDT", now_ms=1)
    assert u.active(exclude_bases=PEGGED_BASES) == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert u.active(top=2) == ["USDC/USDT", "FDUSD/USDT"], "without the exclusion the pegs would lead"
