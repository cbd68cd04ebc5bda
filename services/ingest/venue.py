"""Sync mode's universe and market rules, read from the venue itself (ccxt, public endpoints, no keys).

One ``load_markets`` gives both halves, so a pair never enters the universe without its rules:

* **Rules**: lot step, tick, minimum quantity and notional of every trading spot pair quoted in USDT
  (``shared.market_rules``, the reading the executor's broker uses too).  They are read again once
  ``markets_refresh_s`` of the venue's clock has passed (a day by default, also a day of market time in an
  accelerated rehearsal), and travel in every ``DataReady``.  When they are due and cannot be read the cycle
  is stale (:class:`MarketsUnavailable`, logged ``[MARKETS_STALE]``): no cycle is ever announced with rules
  older than that, nor with the bundled ``markets.json`` (the replay's, never sync mode's).
* **Universe**: ``AURA_SYMBOLS`` when set (a fixed list); otherwise regenerated at each refresh by
  ``services.ingest.universe.refresh_universe`` (markets + 24h quote volume, delisted pairs kept and marked
  in ``universe.json``) and its liquidity screen ``Universe.active``: the trading USDT pairs by 24h quote
  volume, the largest ``universe_max``.  The history screen (a new listing needs ``min_history`` closes
  before it may be ranked) is the strategy's, applied by signal on the candles each cycle: ingest keeps new
  listings in the data so their history accrues.

A pair that is delisted or halted (gone from the markets, or not ``active``: Binance's ``BREAK``) leaves the
universe at the refresh that sees it, and so leaves the candles and rules of every later cycle.  If the
portfolio holds it, it cannot be sold (the venue does not trade it): it is reported, ``[DELISTED]`` once per
pair per day and in ``/readyz``.  A held pair that still trades but fell out of the screen stays in the
universe until it is sold, so the next plan still prices it and the rebalance can exit it; dropping it would
leave it unpriced, valued at nothing and never sold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aura.strategy.types import MarketRule
from services.ingest.providers.ccxt_tail import make_exchange
from services.ingest.sync_config import IngestConfig
from services.ingest.universe import PEGGED_BASES, Universe, UniverseError, load_universe, refresh_universe
from shared.config import Settings
from shared.logging import info, warn
from shared.market_rules import QUOTE, rules_from_ccxt

DAY_MS = 86_400_000
RECHECK_MS = 5 * 60_000  # a stale cycle's pairs: the rules read again this long after the last read at the soonest


class MarketsUnavailable(RuntimeError):
    """The venue's market rules are due and could not be read: the cycle is stale, never published on others."""


@dataclass(frozen=True)
class VenueView:
    """What a cycle is built on: the universe in force and the venue's rules for it."""

    symbols: tuple[str, ...]  # the universe in force, sorted
    rules: dict[str, MarketRule]  # the venue's rules of exactly those symbols
    read_ms: int  # venue time of the markets read the rules come from
    changed_ms: int  # venue time the universe in force last changed
    delisted_held: tuple[str, ...]  # held pairs the venue no longer trades (reported, outside the universe)


def _iso(ms: int | None) -> str:
    return "never" if ms is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ms / 1000))


@dataclass
class VenueUniverse:
    settings: Settings
    config: IngestConfig
    logger: logging.Logger
    exchange: str = "binance"
    fixed: tuple[str, ...] | None = None  # AURA_SYMBOLS; None: the screen decides
    client: Any = None  # a public ccxt client; None: one is made on first use (make_exchange)
    _rules: dict[str, MarketRule] = field(default_factory=dict, init=False)  # every trading USDT pair
    _screened: list[str] = field(default_factory=list, init=False)  # the screen's (or fixed) list, tradable only
    _read_ms: int | None = field(default=None, init=False)
    _view: VenueView | None = field(default=None, init=False)
    _error: str | None = field(default=None, init=False)  # the last failed read, until one succeeds
    # The 24h volumes could not be read at the last refresh: the ranking before is kept (two refresh periods at
    # most) and the next update reads the venue again instead of waiting a whole period.
    _ranking_stale: str | None = field(default=None, init=False)
    _warned: dict[str, int] = field(default_factory=dict, init=False)  # [DELISTED]: symbol -> day warned
    # A cycle went stale on pairs the venue may have halted or delisted since the last read (``recheck``).
    _recheck: tuple[str, ...] = field(default=(), init=False)
    _rechecked_ms: int | None = field(default=None, init=False)  # the last such read (or attempt)
    _due_ms: int | None = field(default=None, init=False)  # the last scheduled read: the daily schedule runs from it

    @property
    def refresh_ms(self) -> int:
        return int(self.settings.markets_refresh_s * 1000)

    def due(self, now_ms: int) -> bool:
        """The scheduled read (a day after the last one, or sooner while the ranking is stale) is due."""
        return self._due_ms is None or self._ranking_stale is not None or now_ms - self._due_ms >= self.refresh_ms

    def recheck_due(self, now_ms: int) -> bool:
        last = max(self._read_ms or 0, self._rechecked_ms or 0)
        return bool(self._recheck) and now_ms - last >= RECHECK_MS

    def recheck(self, symbols: Iterable[str]) -> None:
        """The cycle is stale on ``symbols`` (a held pair with no candle for the decision bar, candles the venue
        would not give): the rules are read again at the next update, ``RECHECK_MS`` after the last read (or
        attempt) at the soonest.  A pair halted or delisted since the daily read held every cycle stale until the
        next one, up to 23 hourly cycles with no plan for any pair (found by an audit); read again, a pair the
        venue no longer trades leaves the universe (reported if held) and the cycle goes on.  Such a read that
        fails keeps the rules in force (they are not due), and it leaves the daily schedule as it was."""
        self._recheck = tuple(sorted(set(symbols)))

    def expected(self) -> tuple[str, ...]:
        """The symbols a cycle is for when the rules cannot be read (what a stale notice names)."""
        if self._view is not None:
            return self._view.symbols
        return self.fixed or ()

    def update(self, now_ms: int, held: Iterable[str] = ()) -> VenueView:
        """The universe and rules for a cycle at the venue's ``now_ms``, reading the venue when they are due.

        Blocking (HTTP through ccxt): the source calls it off the event loop.  Raises
        :class:`MarketsUnavailable` when a due read fails; the next call tries again.
        """
        if self.due(now_ms):
            try:
                self._refresh(now_ms)
            except MarketsUnavailable:
                # Rules a stale cycle's extra read brought within the period stay good until they are due by
                # their own age (a review found the daily read refusing rules an hour old); the read is retried.
                if self._ranking_stale is not None or self._read_ms is None or \
                        now_ms - self._read_ms >= self.refresh_ms:
                    raise  # a ranking two periods old, or rules a period old: no cycle on them
                warn(self.logger, "MARKETS", "the scheduled read of the market rules failed; the rules read "
                     f"{_iso(self._read_ms)} stay in force until they are a period old")
            else:
                self._due_ms = now_ms
        elif self.recheck_due(now_ms):
            self._rechecked_ms = now_ms
            try:
                self._refresh(now_ms, scheduled=False)
            except MarketsUnavailable as exc:
                warn(self.logger, "MARKETS", "market rules could not be read again for a stale cycle; the rules in "
                     "force stay (not due before the daily read)", error=str(exc)[:300])
            self._recheck = ()
        held = set(held)
        # A held pair that still trades stays until it is sold (see the module docs); one the venue no longer
        # trades cannot be priced or sold here, so it is reported instead.
        kept = sorted(s for s in held if s in self._rules and s not in self._screened)
        symbols = tuple(sorted({*self._screened, *kept}))
        delisted_held = tuple(sorted(s for s in held if s not in self._rules))
        previous = self._view
        changed = previous is None or previous.symbols != symbols
        self._view = VenueView(symbols, {s: self._rules[s] for s in symbols}, int(self._read_ms or now_ms),
                               now_ms if changed else previous.changed_ms, delisted_held)
        if changed:
            before = set(previous.symbols) if previous is not None else set()
            left = sorted(before - set(symbols))
            info(self.logger, "UNIVERSE", f"universe in force: {len(symbols)} pairs ({self._how()})",
                 symbols=list(symbols), entered=sorted(set(symbols) - before), left=left,
                 left_delisted=[s for s in left if s not in self._rules], held_kept=kept,
                 changed=_iso(now_ms), rules_read=_iso(self._read_ms))
        day = now_ms // DAY_MS
        for sym in delisted_held:
            if self._warned.get(sym) != day:
                self._warned[sym] = day
                warn(self.logger, "DELISTED", f"{sym} is held but the venue no longer trades it (delisted or "
                     "halted): out of the universe, it cannot be priced or sold here; act on it at the exchange",
                     symbol=sym, exchange=self.exchange, rules_read=_iso(self._read_ms))
        return self._view

    def describe(self) -> str:
        """The readiness detail: the universe in force, when it changed, where the rules come from."""
        v = self._view
        if v is None:
            text = f"venue universe not read yet ({self._how()})"
        else:
            text = (f"{len(v.symbols)} pairs ({self._how()}): {','.join(v.symbols)}; changed {_iso(v.changed_ms)}; "
                    f"rules read from {self.exchange} at {_iso(v.read_ms)}, every {self.settings.markets_refresh_s:g}s")
            if v.delisted_held:
                text += f"; DELISTED but held: {','.join(v.delisted_held)}"
        if self._error is not None:
            text += f"; market rules unreadable: {self._error}"
        if self._ranking_stale is not None:
            text += f"; universe ranking stale: {self._ranking_stale}"
        return text

    # -- reading the venue ----------------------------------------------------------------------------------------

    def _how(self) -> str:
        if self.fixed is not None:
            return "fixed by AURA_SYMBOLS"
        return f"top {self.settings.universe_max} {QUOTE} pairs by 24h quote volume"

    def _client(self) -> Any:
        if self.client is None:
            cfg = self.config
            self.client = make_exchange(self.exchange, api_url=cfg.api_urls.get(self.exchange),
                                        rate_limit_ms=cfg.ccxt_rate_limit_ms, timeout_s=cfg.http_timeout_s)
        return self.client

    def _refresh(self, now_ms: int, scheduled: bool = True) -> None:
        """Read the rules (and the universe); ``scheduled`` False: a stale cycle's extra read, whose failure
        leaves the rules in force standing (``update``)."""
        try:
            client = self._client()
            markets = client.load_markets(True)  # reload: ccxt would otherwise answer from its first read
            rules = rules_from_ccxt(markets, QUOTE)
            if not rules:
                raise MarketsUnavailable(f"{self.exchange} lists no trading {QUOTE} pair")
            if self.fixed is not None:
                screened = [s for s in self.fixed if s in rules]
            else:
                # The same client: refresh_universe's load_markets is answered from the read above, so the
                # universe and the rules come from one exchangeInfo.
                universe, ranking_stale = self._ranked(client, now_ms)
                ranked = universe.active(exclude_bases=PEGGED_BASES)
                screened = [s for s in ranked if s in rules][: self.settings.universe_max]
                pegged = sorted(set(universe.active()) - set(ranked))
                if pegged:
                    info(self.logger, "UNIVERSE", f"{len(pegged)} pairs pegged to a currency left out of the "
                         "ranking (name them in AURA_SYMBOLS to trade them)", symbols=pegged[:20])
        except (MarketsUnavailable, UniverseError) as exc:
            if scheduled:
                self._failed(str(exc))
            raise MarketsUnavailable(str(exc)) from exc
        except Exception as exc:  # ccxt's network and exchange errors, or an answer it could not parse
            detail = f"{self.exchange}: cannot read market rules: {type(exc).__name__}: {exc}"[:300]
            if scheduled:
                self._failed(detail)
            raise MarketsUnavailable(detail) from exc
        if self.fixed is not None:
            gone = [s for s in self.fixed if s not in rules]
            if gone:
                warn(self.logger, "DELISTED", f"{len(gone)} pairs of AURA_SYMBOLS are not trading on "
                     f"{self.exchange}: left out of the universe", symbols=gone)
        if self._recheck:
            info(self.logger, "MARKETS", "market rules read again: a cycle was stale on pairs the venue may have "
                 "halted or delisted", symbols=list(self._recheck[:20]),
                 not_trading=[x for x in self._recheck if x not in rules][:20])
        self._rules, self._screened, self._read_ms, self._error = rules, screened, now_ms, None
        self._recheck = ()
        self._ranking_stale = None if self.fixed is not None else ranking_stale
        info(self.logger, "MARKETS", f"market rules read from {self.exchange}: {len(rules)} trading {QUOTE} pairs",
             exchange=self.exchange, pairs=len(rules), read=_iso(now_ms), next_s=self.settings.markets_refresh_s)

    def _ranked(self, client: Any, now_ms: int) -> tuple[Universe, str | None]:
        """The ranked universe, and why its ranking is an older one (None: read now or recently enough).  When the
        volumes cannot be read, the stored ranking serves for two refresh periods at most, said in /readyz and
        tried again at every update; beyond that the cycle is stale (UniverseError).  Before, a failed read kept
        yesterday's ranking for a whole day without a word where an operator looks (an audit)."""
        try:
            return refresh_universe(self.exchange, self.config, now_ms, quote=QUOTE, max_age_ms=self.refresh_ms,
                                    client=client, keep_previous=False), None
        except UniverseError as exc:
            previous = load_universe(IngestConfig.coerce(self.config).cache_root, self.exchange)
            age = now_ms - previous.refreshed_ms if previous is not None else -1
            # A ranking dated after now (a home reused against an earlier venue clock) is not kept either.
            if previous is None or previous.quote != QUOTE or not 0 <= age < 2 * self.refresh_ms:
                raise
            why = f"{exc}; ranking of {_iso(previous.refreshed_ms)} kept, read again at the next update"
            warn(self.logger, "UNIVERSE_STALE", "24h volumes unreadable: the previous ranking is kept for now",
                 exchange=self.exchange, error=str(exc)[:300], ranked=_iso(previous.refreshed_ms))
            return previous, why

    def _failed(self, detail: str) -> None:
        self._error = detail
        warn(self.logger, "MARKETS_STALE", "venue market rules due but unreadable; no cycle until they are read "
             "(never the bundled or older rules)", exchange=self.exchange, error=detail,
             last_read=_iso(self._read_ms))
