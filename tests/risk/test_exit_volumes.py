"""services.risk.prices.exit_volumes: live, a tick's exits are capped only by the venue's own volume of the venue's
newest closed bar; anything else leaves them uncapped (NaN), never capped by a number nobody verified."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from services.risk.prices import exit_volumes

DAY = 86_400_000
NOW = 1_733_443_200_000 + 60_000  # a minute after 2024-12-06 00:00: the 2024-12-05 bar is the newest closed
NEWEST = NOW // DAY * DAY - DAY
LOG = logging.getLogger("t.exit_volumes")


class Venue:
    """A live price source: its clock and its klines' volumes."""

    def __init__(self, clock: int | None = NOW) -> None:
        self.clock = clock
        self.asked: list[int] = []

    async def exchange_ms(self) -> int | None:
        return self.clock

    async def bar_candles(self, symbols: list[str], timeframe: str, bar_ms: int,
                          ) -> dict[str, tuple[float, float]] | None:
        if self.clock is None:
            return None  # the replay: no venue
        self.asked.append(bar_ms)
        return {s: (100_000.0, 20_000.0) for s in symbols}


def volumes(venue: Venue, bar: int, announced: dict[str, float]) -> dict[str, float]:
    return asyncio.run(exit_volumes(venue, ["BTC/USDT"], "1d", bar, announced, LOG))  # type: ignore[arg-type]


def test_the_venues_volume_of_its_newest_bar_caps_the_exits() -> None:
    venue = Venue()
    out = volumes(venue, NEWEST, {"BTC/USDT": 0.0, "ETH/USDT": 5.0})
    assert out == {"BTC/USDT": 20_000.0, "ETH/USDT": 5.0} and venue.asked == [NEWEST]


def test_an_announced_bar_that_is_not_the_venues_newest_caps_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A compromised ingest names an old bar in which the coin barely traded (and copies the venue's true number
    for it, so nothing disagrees): the exits would have been capped to nearly nothing."""
    for old in (NEWEST - DAY, NEWEST - 30 * DAY, NEWEST + DAY):
        venue = Venue()
        with caplog.at_level(logging.INFO, logger=LOG.name):
            out = volumes(venue, old, {"BTC/USDT": 0.001})
        assert math.isnan(out["BTC/USDT"]) and venue.asked == []
    # Said once per tick as a bar mismatch, not as a volume disagreement per coin.
    assert not [r for r in caplog.records if getattr(r, "tag", None) == "DATA_DISAGREE"]


def test_the_replay_keeps_the_announced_volumes() -> None:
    assert volumes(Venue(clock=None), NEWEST - DAY, {"BTC/USDT": 7.0}) == {"BTC/USDT": 7.0}


def test_held_closes_are_checked_against_the_venues_own_candle() -> None:
    from services.risk.prices import venue_checked_bar

    def check(venue: Venue, closes: dict[str, float]) -> tuple[dict[str, float], str]:
        out, _, forged = asyncio.run(venue_checked_bar(venue, ["BTC/USDT"], [], "1d", NEWEST, closes, {}, LOG))  # type: ignore[arg-type]
        return out, forged

    assert check(Venue(), {"BTC/USDT": 101_500.0, "ETH/USDT": 5.0}) == ({"BTC/USDT": 101_500.0, "ETH/USDT": 5.0}, "")
    assert "not the venue's" in check(Venue(), {"BTC/USDT": 50_000.0})[1]  # half the close: refused
    assert "not the venue's" in check(Venue(), {"BTC/USDT": 97_500.0})[1]  # beyond a fallback source's 2%
    assert check(Venue(), {}) == ({}, "")  # no close in the data: valued at its mark, nothing to compare
    assert check(Venue(clock=None), {"BTC/USDT": 1.0}) == ({"BTC/USDT": 1.0}, "")  # the replay: no venue
    # Not confirmable (not out yet, or no longer listed): neither refused as forged nor believed; its last mark.
    assert check(Unpublished(), {"BTC/USDT": 100_000.0, "ETH/USDT": 5.0}) == ({"ETH/USDT": 5.0}, "")


class Unpublished(Venue):
    """A venue with candles for BTC/USDT only (the others not out yet, or no longer listed)."""

    async def bar_candles(self, symbols: list[str], timeframe: str, bar_ms: int,
                          ) -> dict[str, tuple[float, float]] | None:
        return {s: (100_000.0, 20_000.0) for s in symbols if s == "BTC/USDT" and s not in self.missing}

    missing: tuple[str, ...] = ("BTC/USDT",)


def test_a_cycles_legs_are_capped_by_the_venues_volumes_not_the_announced_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    """A compromised ingest announces a huge volume for the illiquid coin signal is about to buy (its buy would pass
    the participation cap) and a tiny one for a held coin (its exit would be held back).  Live, the venue's own
    volumes of the decision bar cap the plan; a coin to buy that the venue has no candle for gets no room, a held
    one the venue has no candle for is not held back."""
    from services.risk.prices import venue_checked_bar

    def caps(venue: Venue, held: list[str], wanted: list[str], announced: dict[str, float]) -> dict[str, float]:
        return asyncio.run(venue_checked_bar(venue, held, wanted, "1d", NEWEST, {}, announced, LOG))[1]  # type: ignore[arg-type]

    announced = {"BTC/USDT": 0.001, "ETH/USDT": 5e9, "SOL/USDT": 7.0}
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        out = caps(Venue(), ["BTC/USDT"], ["ETH/USDT"], announced)
    assert out == {"BTC/USDT": 20_000.0, "ETH/USDT": 20_000.0, "SOL/USDT": 7.0}  # SOL: neither held nor bought
    said = sorted(r.fields["symbol"] for r in caplog.records if getattr(r, "tag", None) == "DATA_DISAGREE")  # type: ignore[attr-defined]
    assert said == ["BTC/USDT", "ETH/USDT"]
    gone = Unpublished()
    gone.missing = ("BTC/USDT",)
    out = caps(gone, ["BTC/USDT"], ["ETH/USDT"], announced)
    assert math.isnan(out["BTC/USDT"]) and out["ETH/USDT"] == 0.0
    assert caps(gone, ["BTC/USDT"], ["BTC/USDT"], announced)["BTC/USDT"] == 0.0  # held and wanted: no top-up
    assert caps(Venue(clock=None), ["BTC/USDT"], ["ETH/USDT"], announced) == announced  # the replay: as announced
