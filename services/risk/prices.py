"""Where the risk tick gets its latest prices: the newest replay snapshot, or public exchange tickers.

Replay (dry run): the closes of the newest ``DataReady`` snapshot, fetched from the candle object store and
checked against its digest, exactly as the signal service reads it.  Live: the exchange's public ticker
endpoint through ccxt *without keys* (exchange keys are read by the executor only), and so are the market rules
and the decision bar's volumes the exits are sized with (never ingest's: see ``LivePrices``); the taker fee of
the cost gate from that public market list (``services/risk/costs.py``).
A failed read returns None: the tick's sync guard decides what that means, never this module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule
from shared.bus import newest_valid
from shared.candles import decode_panel
from shared.contracts import DataReady, MarketRuleMsg, content_id
from shared.logging import info, warn
from shared.market_rules import QUOTE, taker_fee
from shared.objects import verified_candles
from shared.service import ServiceContext


@dataclass(frozen=True)
class PriceRead:
    prices: dict[str, float]
    markets: list[MarketRuleMsg]
    # The prices' time, on the data's own clock: the replay's newest bar, or the exchange's clock when the
    # tickers were read (live); never the host's.
    as_of_ms: int
    digest: str  # what the prices came from (snapshot digest, or a content id of the ticker answer)
    # The kill-switch's times in the frame of a cycle's as_of (a bar's open), not the exchange's clock a bar
    # ahead of it (found by an audit: a tick re-armed a cycle's latch a bar early).  ``bar_open_ms``: the open of
    # the newest bar closed, what the cooldown has run to.  ``latch_ms``: the bar whose prices these are, what a
    # latch by this read is stamped with: live, the bar still forming (the backtest would catch the same loss at
    # that bar's decision; stamped with the closed one, a tick's halt lasted a bar less); replay, the bar itself.
    # 0: no data time.
    bar_open_ms: int = 0
    latch_ms: int = 0


class PriceSource(Protocol):
    name: str

    async def read(self, symbols: list[str]) -> PriceRead | None: ...

    async def exchange_ms(self) -> int | None:
        """The venue's clock (live), None where there is no venue (the replay): what a plan's age is measured
        against, never the local clock.  Raises on a failed read."""
        ...

    async def taker_fee(self) -> float | None:
        """The venue's taker fee (live: its public markets), None where there is no venue.  Raises on a failed
        read."""
        ...

    async def bar_candles(self, symbols: list[str], timeframe: str, bar_ms: int,
                          ) -> dict[str, tuple[float, float]] | None:
        """The venue's own (close, base volume) of each symbol's bar opening at ``bar_ms`` (live), None where there
        is no venue (the replay's data is its venue).  Raises on a failed read."""
        ...

    async def market_rules(self, symbols: list[str]) -> dict[str, MarketRule] | None:
        """The venue's own market rules of ``symbols`` (live; a symbol it does not list is absent), None where
        there is no venue (the replay's rules are the data's).  Raises on a failed read."""
        ...

    async def close(self) -> None: ...


class ReplayPrices:
    """The newest DataReady snapshot's last closes (the replay has no price newer than its newest bar)."""

    name = "replay (newest DataReady snapshot)"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._cache: tuple[str, dict[str, float]] | None = None

    async def newest(self) -> DataReady | None:
        return await newest_valid(self.ctx.js, DataReady)

    async def read(self, symbols: list[str]) -> PriceRead | None:
        try:
            ready = await self.newest()
            if ready is None:
                return None
            if self._cache is None or self._cache[0] != ready.digest:
                data = await verified_candles(self.ctx.js, ready.digest)
                if data is None:
                    warn(self.ctx.logger, "RISK_TICK", "candle object does not match its digest; no prices",
                         digest=ready.digest[:16])
                    return None
                panel = decode_panel(data)
                closes = {s: float(p) for s, p in zip(panel.symbols, panel.close[-1], strict=True)
                          if math.isfinite(float(p)) and float(p) > 0}
                self._cache = (ready.digest, closes)
        except Exception as exc:
            warn(self.ctx.logger, "RISK_TICK", "could not read the newest snapshot's prices", error=str(exc)[:200])
            return None
        return PriceRead(dict(self._cache[1]), list(ready.markets), ready.as_of_ms, ready.digest, ready.as_of_ms,
                         ready.as_of_ms)

    async def exchange_ms(self) -> int | None:
        return None

    async def taker_fee(self) -> float | None:
        return None

    async def bar_candles(self, symbols: list[str], timeframe: str, bar_ms: int,
                          ) -> dict[str, tuple[float, float]] | None:
        return None

    async def market_rules(self, symbols: list[str]) -> dict[str, MarketRule] | None:
        return None

    async def close(self) -> None:
        return None


class LivePrices:
    """Public ticker prices, market rules and bar volumes from the exchange itself (no credentials).

    Nothing the tick's exits are sized with comes from ingest: a compromised ingest announcing a held coin's
    bar with no volume, or its market with a minimum notional of 1e12, made every stop-loss and kill-switch
    exit round or cap to nothing while the latch stayed set.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        from services.executor.brokers.ccxt_broker import CcxtBroker
        from services.executor.brokers.ccxt_client import venue_url

        s = ctx.settings
        self.ctx = ctx
        self.client = CcxtBroker(s.exchange_id, base_url=venue_url(s), testnet=s.testnet, logger=ctx.logger)
        self.name = f"live public tickers ({s.exchange_id})"

    async def read(self, symbols: list[str]) -> PriceRead | None:
        # Stamped with the exchange's clock, never the host's: the stamp is the tick exit plan's data time (the
        # executor's staleness check is on the exchange's clock) and what the kill-switch cooldown counts on.
        # Read before the tickers, so the prices are never older than their stamp says.
        try:
            now = await self.client.fetch_time()
        except Exception as exc:
            warn(self.ctx.logger, "RISK_TICK", "exchange clock read failed; no prices",
                 error=f"{type(exc).__name__}: {exc}"[:200])
            return None
        try:
            prices = await self.client.fetch_prices(symbols) if symbols else {}
            # ccxt's cached market list, reloaded with the fee (``taker_fee``, services/risk/costs.py).
            rules = await self.client.load_markets()
            markets = [MarketRuleMsg(r.symbol, r.step_size, r.tick_size, r.min_qty, r.min_notional)
                       for s, r in sorted(rules.items()) if s in symbols]
        except Exception as exc:
            warn(self.ctx.logger, "RISK_TICK", "ticker read failed", error=f"{type(exc).__name__}: {exc}"[:200])
            return None
        bar_ms = timeframe_ms(self.ctx.settings.timeframe)
        forming = now // bar_ms * bar_ms
        return PriceRead(prices, markets, now, content_id({"prices": prices, "at": now}, prefix="tickers-"),
                         forming - bar_ms, forming)

    async def exchange_ms(self) -> int | None:
        return await self.client.fetch_time()

    async def taker_fee(self) -> float | None:
        # Reloaded: a fee read once at boot would otherwise be ccxt's first answer for the life of the process.
        markets = await self.client.exchange.load_markets(True)
        fee = taker_fee(markets, QUOTE)
        if fee is None:
            raise ValueError(f"{self.ctx.settings.exchange_id} states no taker fee for its {QUOTE} pairs")
        return fee

    async def bar_candles(self, symbols: list[str], timeframe: str, bar_ms: int,
                          ) -> dict[str, tuple[float, float]] | None:
        return await self.client.fetch_bar(symbols, timeframe, bar_ms) if symbols else {}

    async def market_rules(self, symbols: list[str]) -> dict[str, MarketRule] | None:
        rules = await self.client.load_markets()  # ccxt's cached list, reloaded with the fee (costs.py)
        return {s: rules[s] for s in symbols if s in rules}

    async def close(self) -> None:
        await self.client.close()


async def exit_volumes(source: PriceSource, held: list[str], timeframe: str, bar: int, volumes: dict[str, float],
                       logger: logging.Logger) -> dict[str, float]:
    """``volumes`` (the announced decision bar's) with the held coins' volumes the venue publishes (live): those
    cap a tick's exits.  Unreadable, or the announced bar not the venue's newest closed one (a compromised ingest
    could name an old bar with next to no volume, and copy the venue's number for it): NaN, so the exits go out
    uncapped (their reasons say so) rather than held back by a number nobody verified."""
    try:
        now = await source.exchange_ms()
        iv = timeframe_ms(timeframe)
        newest = None if now is None else now // iv * iv - iv
        if newest is not None and bar != newest:
            (warn if bar < newest - iv else info)(
                logger, "RISK_TICK", "the announced bar is not the venue's newest closed one; exits not capped",
                bar_ms=bar, venue_bar_ms=newest)
            venue: dict[str, float] | None = {}
        else:
            candles = await source.bar_candles(held, timeframe, bar)
            venue = None if candles is None else {sym: volume for sym, (_, volume) in candles.items()}
    except Exception as exc:
        warn(logger, "RISK_TICK", "venue bar volumes unreadable; exits not capped this tick",
             error=f"{type(exc).__name__}: {exc}"[:200])
        venue = {}
    if venue is None:
        return volumes
    for sym in held:
        announced, published = volumes.get(sym, math.nan), venue.get(sym, math.nan)
        if math.isfinite(announced) and math.isfinite(published) and not math.isclose(announced, published,
                                                                                        rel_tol=0.01):
            warn(logger, "DATA_DISAGREE", "announced bar volume is not the venue's; the venue's caps the exits",
                 symbol=sym, bar_ms=bar, announced=announced, venue=published)
    return {**volumes, **{sym: venue.get(sym, math.nan) for sym in held}}


# How far an announced close of a held coin may be from the venue's own close of the same bar: the exchange's own
# candles agree exactly; ingest takes a fallback source (CoinGecko's USD aggregate, another venue) within 2% of
# them (services/ingest/sync_config.py tol_other_venue), and a 2% error cannot latch a kill-switch or trip a stop.
CLOSE_TOLERANCE = 0.02


async def venue_checked_bar(source: PriceSource, held: list[str], wanted: list[str], timeframe: str, bar: int,
                            closes: dict[str, float], volumes: dict[str, float], logger: logging.Logger,
                            ) -> tuple[dict[str, float], dict[str, float], str]:
    """Live, a cycle's decision bar checked against the venue's own candles in one read: (the ``closes`` to plan
    with, the ``volumes`` its legs are capped by, why the announced closes of the held coins are not the venue's
    or '').  With no venue (the replay): ``closes`` and ``volumes`` as announced.  Raises on a failed read (the
    target is handled again).

    * Closes of ``held`` coins: equity, the drawdown and the stops are measured on them, so a compromised ingest
      could otherwise latch the kill-switch, or sell at a stop, on prices the market never printed.  A held coin
      the venue gives no candle for (not out yet, or not listed any more) cannot be confirmed: left out of the
      closes, valued at its last mark as any coin without a price.
    * Volumes of ``held`` coins and of the coins the target ``wanted`` (weighted: what the plan may buy, held or
      not) are the venue's.  Announced by ingest alone, a huge volume for an illiquid coin let a cycle's buy past the
      participation cap, and a tiny one held a cycle's exits back (found by an audit).  Where the venue gives no
      candle, a coin the target wants gets no room (0: no risk added on a market whose volume cannot be confirmed; a
      trim of a held one waits too) and a held coin it does not want goes out uncapped (NaN: an exit is never held
      back by a number nobody verified, as the ticks do)."""
    candles = await source.bar_candles(sorted({*held, *wanted}), timeframe, bar)
    if candles is None:
        return closes, volumes, ""
    out = dict(closes)
    for sym in held:
        announced = closes.get(sym)
        if announced is None:  # no close in the data: valued at its last mark, as the gate always does
            continue
        if sym not in candles:
            del out[sym]
            warn(logger, "DATA_DISAGREE", "the venue gives no candle for a held coin's decision bar; valued at its "
                 "last mark", symbol=sym, bar_ms=bar, announced=announced)
            continue
        venue = candles[sym][0]
        if not math.isclose(announced, venue, rel_tol=CLOSE_TOLERANCE):
            return closes, volumes, f"announced close {announced:.8g} of held {sym} at bar {bar} is not the " \
                                    f"venue's ({venue:.8g})"
    checked = dict(volumes)
    for sym in sorted({*held, *wanted}):
        published = candles[sym][1] if sym in candles else (0.0 if sym in wanted else math.nan)
        announced = volumes.get(sym, math.nan)
        if math.isfinite(announced) and not math.isclose(announced, published, rel_tol=0.01):
            warn(logger, "DATA_DISAGREE", "announced bar volume is not the venue's; the venue's caps the plan",
                 symbol=sym, bar_ms=bar, announced=announced, venue=published)
        checked[sym] = published
    return out, checked, ""


def make_price_source(ctx: ServiceContext) -> PriceSource:
    return ReplayPrices(ctx) if ctx.settings.dry_run else LivePrices(ctx)
