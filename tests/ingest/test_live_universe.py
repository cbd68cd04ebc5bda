"""Sync mode's universe and rules come from the venue (the simulator's exchangeInfo and 24h tickers through
ccxt): the screen regenerates and bounds the universe, rules change with the venue, a delisted pair leaves
(and is reported while held), unreadable rules make the cycle stale."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aura.strategy.types import MarketRule
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.ingest.providers.ccxt_tail import make_exchange
from services.ingest.sources import SyncSource
from services.ingest.venue import MarketsUnavailable, VenueUniverse
from shared.config import load_settings
from shared.market_rules import is_tradable, rule_from_ccxt, rules_from_ccxt, taker_fee
from tests.ingest.conftest import DAY, NOW, Face, top_by_volume

LOG = "t.venue"


def _market(sym: str, *, active: bool | None = True, taker: float | None = 0.001, spot: bool = True,
            step: str = "0.001") -> dict[str, Any]:
    base, quote = sym.split("/")
    return {"symbol": sym, "base": base, "quote": quote, "spot": spot, "active": active, "taker": taker,
            "precision": {"amount": 0.1, "price": 0.01}, "limits": {"amount": {"min": 0.1}, "cost": {"min": 10.0}},
            "info": {"filters": [{"filterType": "LOT_SIZE", "stepSize": step, "minQty": step},
                                 {"filterType": "PRICE_FILTER", "tickSize": "0.01"},
                                 {"filterType": "NOTIONAL", "minNotional": "5"}]}}


# --- pure: reading ccxt markets -------------------------------------------------------------------------------


def test_rules_are_the_exchanges_filters_and_only_for_trading_spot_pairs_in_the_quote() -> None:
    markets = {"A/USDT": _market("A/USDT"), "B/USDT": _market("B/USDT", active=False),
               "C/BTC": _market("C/BTC"), "D/USDT": _market("D/USDT", spot=False),
               "E/USDT": _market("E/USDT", active=None)}  # ccxt: the venue does not say; counts as trading
    assert rule_from_ccxt("A/USDT", markets["A/USDT"]) == MarketRule("A/USDT", 0.001, 0.01, 0.001, 5.0)
    assert sorted(rules_from_ccxt(markets, "USDT")) == ["A/USDT", "E/USDT"]
    assert not is_tradable(markets["B/USDT"]) and not is_tradable(markets["C/BTC"], "USDT")
    # Without the exchange's own filters, ccxt's unified precision and limits stand in.
    bare = {**markets["A/USDT"], "info": {}}
    assert rule_from_ccxt("A/USDT", bare) == MarketRule("A/USDT", 0.1, 0.01, 0.1, 10.0)


def test_the_largest_market_order_is_the_smallest_max_the_venue_states() -> None:
    """An exit larger than the venue's maxQty is refused every time: the executor needs the number to send it in
    pieces.  Binance states LOT_SIZE and MARKET_LOT_SIZE (0 there: no limit); ccxt's limits stand in elsewhere."""
    market = _market("A/USDT")
    market["info"]["filters"] += [{"filterType": "MARKET_LOT_SIZE", "minQty": "0", "maxQty": "120.5"}]
    market["info"]["filters"][0]["maxQty"] = "9000"
    assert rule_from_ccxt("A/USDT", market).max_qty == 120.5
    market["info"]["filters"][-1]["maxQty"] = "0.00000000"
    assert rule_from_ccxt("A/USDT", market).max_qty == 9000.0
    bare = {**_market("A/USDT"), "info": {}, "limits": {"amount": {"min": 0.1, "max": 500.0}, "market": {"max": 80}}}
    assert rule_from_ccxt("A/USDT", bare).max_qty == 80.0
    assert math.isinf(rule_from_ccxt("A/USDT", _market("A/USDT")).max_qty)  # none stated: none assumed
    assert rule_from_ccxt("A/USDT", _market("A/USDT")).quote_buys  # not stated: Binance's default
    market["info"]["quoteOrderQtyMarketAllowed"] = False
    assert not rule_from_ccxt("A/USDT", market).quote_buys


def test_the_taker_fee_is_the_highest_of_the_trading_pairs_and_never_invented() -> None:
    markets = {"A/USDT": _market("A/USDT", taker=0.00075), "B/USDT": _market("B/USDT", taker=0.001),
               "C/USDT": _market("C/USDT", taker=0.02, active=False), "D/BTC": _market("D/BTC", taker=0.01)}
    assert taker_fee(markets, "USDT") == 0.001  # a halted pair's or another quote's fee is not ours
    assert taker_fee({"A/USDT": _market("A/USDT", taker=None)}, "USDT") is None


# --- the venue: the simulator through ccxt ----------------------------------------------------------------------


def _settings(tmp_path: Path, **env: str) -> Any:
    return load_settings({"AURA_HOME": str(tmp_path), "AURA_SNAPSHOT_BARS": "60", "AURA_INGEST_SOURCE": "sync",
                          **{f"AURA_{k.upper()}": v for k, v in env.items()}})


@pytest.mark.integration
def test_the_broker_reads_the_rules_ingest_carries(venue: Any, api: Face) -> None:
    """The executor places by the same numbers risk rounded with: its broker and ingest read the venue alike."""
    markets = make_exchange("binance", api_url=api.url, rate_limit_ms=1).load_markets()
    assert len(markets) == 41

    async def broker_rules() -> dict[str, Any]:
        broker = CcxtBroker("binance", base_url=api.url, enable_rate_limit=False, adjust_for_time_difference=False)
        try:
            return await broker.load_markets()
        finally:
            await broker.close()

    assert asyncio.run(broker_rules()) == rules_from_ccxt(markets)


@pytest.mark.integration
def test_the_universe_is_regenerated_by_the_screen_and_bounded(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                               api: Face, caplog: pytest.LogCaptureFixture) -> None:
    uni = VenueUniverse(_settings(tmp_path, universe_max="5"), make_config(), logging.getLogger(LOG))
    with caplog.at_level(logging.INFO, logger=LOG):
        view = uni.update(NOW)
    assert list(view.symbols) == sorted(top_by_volume(venue, 5)) and len(view.symbols) == 5
    assert "BTC/USDT" in view.symbols and "MATIC/USDT" not in view.symbols  # MATIC is halted (BREAK) at NOW
    assert api.counts == {"exchangeInfo": 1, "24hr": 1}  # one markets read serves the rules and the screen
    # The rules are the venue's, for exactly the universe.
    btc = venue.sim.market.rules["BTCUSDT"]
    assert set(view.rules) == set(view.symbols)
    assert view.rules["BTC/USDT"] == MarketRule("BTC/USDT", float(btc.step_size), float(btc.tick_size),
                                                float(btc.min_qty), float(btc.min_notional), float(btc.max_qty))
    logged = [r for r in caplog.records if getattr(r, "tag", None) == "UNIVERSE"]
    assert len(logged) == 1 and logged[0].fields["symbols"] == list(view.symbols)  # type: ignore[attr-defined]
    assert "5 pairs (top 5 USDT pairs by 24h quote volume)" in uni.describe()
    assert "changed 2024-12-06T00:00Z" in uni.describe()

    api.reset_counts()
    assert uni.update(NOW + DAY - 1) == view and api.total == 0  # within the refresh period: no request

    # A day on, the venue has changed: BTC's lot step, DOGE gone (if it was in the top 5, the next pair enters).
    rules = venue.sim.market.rules
    rules["BTCUSDT"] = dataclasses.replace(rules["BTCUSDT"], step_size=Decimal("0.001"))
    venue.sim.market.delisted.add("ETHUSDT")
    later = uni.update(NOW + DAY)
    assert later.rules["BTC/USDT"].step_size == 0.001
    assert "ETH/USDT" not in later.symbols and len(later.symbols) == 5
    assert list(later.symbols) == sorted(top_by_volume(venue, 5))
    assert later.changed_ms == NOW + DAY and later.read_ms == NOW + DAY


@pytest.mark.integration
def test_held_pairs_stay_until_sold_and_delisted_ones_are_reported(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    uni = VenueUniverse(_settings(tmp_path, universe_max="3"), make_config(), logging.getLogger(LOG))
    top = top_by_volume(venue, 3)
    outside = next(s for s in top_by_volume(venue, 40) if s not in top)
    held = {outside, "MATIC/USDT"}  # one still trading but screened out, one halted
    with caplog.at_level(logging.INFO, logger=LOG):
        view = uni.update(NOW, held)
        again = uni.update(NOW + 3_600_000, held)
        next_day = uni.update(NOW + DAY, held)
    # Screened out but held and trading: kept, priced and ruled, so the next plan can exit it.
    assert set(view.symbols) == {*top, outside} and outside in view.rules
    # Halted: out of the universe (nothing to price it with, nothing can sell it), and reported.
    assert "MATIC/USDT" not in view.symbols and view.delisted_held == ("MATIC/USDT",)
    assert again.delisted_held == next_day.delisted_held == ("MATIC/USDT",)
    warned = [r for r in caplog.records if getattr(r, "tag", None) == "DELISTED"]
    assert [r.fields["symbol"] for r in warned] == ["MATIC/USDT", "MATIC/USDT"]  # type: ignore[attr-defined]
    assert "DELISTED but held: MATIC/USDT" in uni.describe()
    # Once sold, the screened-out pair leaves at the next cycle.
    assert uni.update(NOW + DAY + 1, {"MATIC/USDT"}).symbols == tuple(sorted(top))


@pytest.mark.integration
def test_a_fixed_universe_keeps_its_pairs_but_never_a_delisted_one(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                                   api: Face, caplog: pytest.LogCaptureFixture) -> None:
    uni = VenueUniverse(_settings(tmp_path), make_config(), logging.getLogger(LOG),
                        fixed=("ETH/USDT", "BTC/USDT", "MATIC/USDT"))
    with caplog.at_level(logging.INFO, logger=LOG):
        view = uni.update(NOW)
    assert view.symbols == ("BTC/USDT", "ETH/USDT")
    assert api.counts == {"exchangeInfo": 1}  # the rules only: no screen, no tickers
    gone = [r for r in caplog.records if getattr(r, "tag", None) == "DELISTED"]
    assert gone and gone[0].fields["symbols"] == ["MATIC/USDT"]  # type: ignore[attr-defined]
    assert "fixed by AURA_SYMBOLS" in uni.describe()


@pytest.mark.integration
def test_unreadable_rules_are_never_replaced_by_older_ones(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                           api: Face, caplog: pytest.LogCaptureFixture) -> None:
    uni = VenueUniverse(_settings(tmp_path), make_config(), logging.getLogger(LOG), fixed=("BTC/USDT",))
    first = uni.update(NOW)
    api.fault("http_error", "exchangeInfo", status=500)
    with caplog.at_level(logging.WARNING, logger=LOG), pytest.raises(MarketsUnavailable):
        uni.update(NOW + DAY)  # due, unreadable: no view, although yesterday's rules are at hand
    assert any(getattr(r, "tag", None) == "MARKETS_STALE" for r in caplog.records)
    assert "market rules unreadable" in uni.describe()
    with pytest.raises(MarketsUnavailable):
        uni.update(NOW + DAY + 60_000)  # asked again at every poll while due
    api.clear_faults()
    assert uni.update(NOW + DAY + 120_000).read_ms == NOW + DAY + 120_000
    assert first.rules == uni.update(NOW + DAY + 180_000).rules
    assert "unreadable" not in uni.describe()


@pytest.mark.integration
def test_a_stale_cycles_extra_read_of_the_rules_never_makes_things_worse(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                                         api: Face,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The extra read a stale cycle asks for (``recheck``) comes five minutes after the last read or attempt; if it
    fails the rules in force stay (they are not due: no cycle made stale by it), and it does not move the daily
    read (a review found both)."""
    uni = VenueUniverse(_settings(tmp_path), make_config(), logging.getLogger(LOG), fixed=("BTC/USDT", "ETH/USDT"))
    first = uni.update(NOW)
    api.reset_counts()
    uni.recheck(["ETH/USDT"])
    assert uni.update(NOW + 60_000).read_ms == NOW and api.counts == {}  # too soon
    api.fault("http_error", "exchangeInfo", status=500)
    with caplog.at_level(logging.WARNING, logger=LOG):
        kept = uni.update(NOW + 6 * 60_000)  # fails: no MarketsUnavailable, the rules in force stay
    assert kept.rules == first.rules and kept.read_ms == NOW
    assert any(r.getMessage().startswith("market rules could not be read again") for r in caplog.records)
    assert not any(getattr(r, "tag", None) == "MARKETS_STALE" for r in caplog.records)
    api.clear_faults()
    uni.recheck(["ETH/USDT"])
    assert uni.update(NOW + 8 * 60_000).read_ms == NOW  # five minutes after the failed attempt at the soonest
    assert uni.update(NOW + 12 * 60_000).read_ms == NOW + 12 * 60_000  # read again
    api.reset_counts()
    api.fault("http_error", "exchangeInfo", status=500)
    with caplog.at_level(logging.WARNING, logger=LOG):
        held = uni.update(NOW + DAY)  # the daily read fails, but the rules in force are 23.8 h old: they stay
    assert held.read_ms == NOW + 12 * 60_000 and any("stay in force" in r.getMessage() for r in caplog.records)
    api.clear_faults()
    assert uni.update(NOW + DAY + 60_000).read_ms == NOW + DAY + 60_000  # the daily read, retried at the next poll


@pytest.mark.integration
def test_unreadable_volumes_keep_the_ranking_briefly_said_and_retried(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                                      api: Face) -> None:
    """The daily refresh reads the rules but not the 24h volumes: the ranking before is kept, /readyz says so,
    and the next update reads the venue again (it waited a whole day, unsaid, found by an audit); after two
    refresh periods without volumes the cycle is stale."""
    uni = VenueUniverse(_settings(tmp_path, universe_max="5"), make_config(), logging.getLogger(LOG))
    first = uni.update(NOW)
    api.fault("http_error", "24hr", status=500)
    kept = uni.update(NOW + DAY)  # rules read, volumes not: yesterday's top 5
    assert kept.symbols == first.symbols and "universe ranking stale" in uni.describe()
    assert "ranking of 2024-12-06T00:00Z kept" in uni.describe()
    api.reset_counts()
    uni.update(NOW + DAY + 60_000)  # not a day later: at the next update
    assert api.counts.get("24hr", 0) >= 1
    with pytest.raises(MarketsUnavailable, match="24h volume"):
        uni.update(NOW + 2 * DAY)  # two periods on the same ranking: no cycle on it
    api.clear_faults()
    assert list(uni.update(NOW + 2 * DAY + 60_000).symbols) == sorted(top_by_volume(venue, 5))
    assert "stale" not in uni.describe()


@pytest.mark.integration
def test_a_sync_step_carries_the_venues_rules_or_is_stale(tmp_path: Path, make_config, venue: Any,  # type: ignore[no-untyped-def]
                                                          api: Face) -> None:
    settings = _settings(tmp_path, universe_max="3")
    src = SyncSource(settings, None, None, logging.getLogger(LOG), config=make_config(),
                     clock_ms=lambda: NOW + 300_000)
    api.fault("http_error", "exchangeInfo", status=500)
    stale = asyncio.run(src.next_step())
    assert stale is not None and stale.snapshot is None and stale.rules is None
    assert stale.reason.startswith("market rules unreadable") and stale.cycle_id == "1d-20241205T0000"
    assert src.done(stale) is False  # the bar is asked for again
    api.clear_faults()
    step = asyncio.run(src.next_step())
    assert step is not None and step.snapshot is not None and step.rules is not None
    assert set(step.snapshot.symbols) == set(step.rules) == set(top_by_volume(venue, 3))
    assert "3 pairs" in src.universe_detail()


def test_aura_symbols_take_the_spellings_the_cli_takes_and_refuse_what_is_no_pair(tmp_path: Path) -> None:
    """Taken verbatim, ETH_USDT and solusdt matched no market: the universe shrank to BTC/USDT with a
    "[DELISTED] ... not trading" line that was not true (found by an audit)."""
    from services.ingest.sources import fixed_symbols
    from shared.config import ConfigError

    assert fixed_symbols(_settings(tmp_path, symbols="BTC/USDT, ETH_USDT,solusdt,ETH/USDT")) == [
        "BTC/USDT", "ETH/USDT", "SOL/USDT"]
    with pytest.raises(ConfigError, match=r"setting symbols \(env AURA_SYMBOLS\): symbol 'BTC' is not BASE/QUOTE"):
        fixed_symbols(_settings(tmp_path, symbols="ETH/USDT,BTC"))
    assert fixed_symbols(_settings(tmp_path)) is None


def test_dust_left_by_an_exit_is_no_holding_that_keeps_a_pair_in_the_universe() -> None:
    """Found by an audit: every pair ever traded left a sliver below one lot step after its exit and, counted as
    held, stayed in the universe for good, past AURA_UNIVERSE_MAX."""
    from services.ingest.service import held_pairs
    from shared.contracts import PortfolioSnapshot

    snap = PortfolioSnapshot(snapshot_id="s", cycle_id="c", plan_id="", status="executed", cash=0.0,
                             holdings={"BTC/USDT": 0.00000900, "ETH/USDT": 0.5, "NEW/USDT": 1e-9, "OLD/USDT": 0.0},
                             entry_prices={"BTC/USDT": 60_000.0, "ETH/USDT": 3_000.0}, equity=0.0, equity_history=[])
    # 0.54 USDT of BTC is dust at a 5 USDT allowance; a coin with no entry price is counted (never hidden).
    assert held_pairs(snap, 5.0) == {"ETH/USDT", "NEW/USDT"}


def test_a_universe_stored_with_a_date_after_the_venues_clock_is_read_again(tmp_path: Path, make_config,  # type: ignore[no-untyped-def]
                                                                              venue: Any, api: Face) -> None:
    """Found by an audit: a home reused against a venue whose clock is earlier (a rehearsal from an earlier date)
    kept a universe dated in its future: ranked on volumes from after now, and never refreshed."""
    import json

    from services.ingest.universe import universe_path

    cfg = make_config()
    VenueUniverse(_settings(tmp_path, universe_max="3"), cfg, logging.getLogger(LOG)).update(NOW)
    path = universe_path(cfg.cache_root, "binance")
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "refreshed_ms": NOW + 30 * DAY}))
    api.reset_counts()
    VenueUniverse(_settings(tmp_path, universe_max="3"), cfg, logging.getLogger(LOG)).update(NOW + 2 * DAY)
    assert api.counts.get("24hr", 0) >= 1, dict(api.counts)
    assert json.loads(path.read_text())["refreshed_ms"] <= NOW + 2 * DAY
