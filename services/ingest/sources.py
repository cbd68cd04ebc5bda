"""Where ingest's cycles come from: the bundled replay, or the provider chain into the Parquet cache.

Both yield :class:`ReplayStep` values (a complete snapshot, or the list of symbols missing from it) so the
service loop that publishes them is one piece of code.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.ingest.cache import load_panel
from services.ingest.providers.base import Provider, interval_ms, last_closed_open, unified_symbol
from services.ingest.providers.ccxt_tail import make_exchange
from services.ingest.replay import (
    ReplayStep,
    first_index_at_or_after,
    load_history,
    load_market_rules,
    replay_step,
)
from services.ingest.sync import sync
from services.ingest.sync_config import IngestConfig, build_providers
from services.ingest.venue import MarketsUnavailable, VenueUniverse
from shared.config import ConfigError, Settings
from shared.cycles import cycle_id_for
from shared.logging import info, warn

monotonic = time.monotonic  # readiness's clock (a module name, so a test can move it)


def parse_date_ms(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d")) * 1000


class ReplaySource:
    """Reveal one bar of the bundled history per cycle, resuming after ``last_done_ms``; the rules are the
    bundled ``markets.json`` (the replay's venue is the past, whose rules no exchange serves)."""

    def __init__(self, settings: Settings, last_done_ms: int | None, logger: logging.Logger) -> None:
        self.settings = settings
        self.history = load_history(Path(settings.replay_dir), settings.timeframe)
        self.rules = load_market_rules(Path(settings.replay_dir) / "markets.json")
        info(logger, "BOOT", "replay history loaded", symbols=len(self.history.symbols),
             bars=len(self.history.timestamps), first_ms=int(self.history.timestamps[0]),
             last_ms=int(self.history.timestamps[-1]))
        if last_done_ms is not None:
            self.index = first_index_at_or_after(self.history, last_done_ms + interval_ms(settings.timeframe))
            info(logger, "BOOT", "resuming replay after the last completed cycle", last_as_of_ms=last_done_ms)
        else:
            first = int(self.history.timestamps[0])
            start = parse_date_ms(settings.replay_start) if settings.replay_start else first
            self.index = max(first_index_at_or_after(self.history, start),
                             min(settings.snapshot_bars, len(self.history.timestamps) - 1))

    @property
    def exhausted(self) -> bool:
        return self.index >= len(self.history.timestamps)

    def describe(self) -> str:
        return f"replay cursor {self.index}/{len(self.history.timestamps)}"

    def readiness(self, patience_s: float) -> tuple[bool, str]:
        """The replay has no venue clock to fall behind: it is where its cursor is."""
        return True, self.describe()

    async def next_step(self) -> ReplayStep | None:
        if self.exhausted:
            return None
        step = replay_step(self.history, self.index, self.settings.snapshot_bars, self.settings.timeframe)
        return replace(step, rules=self.rules)

    def done(self, step: ReplayStep) -> bool:
        """End ``step``'s bar; True: persist the cursor.  A hole in bundled history never fills, so a stale
        step ends its bar like a complete one."""
        self.index = step.index + 1
        return True


class VenueClock:
    """The exchange's clock (its server time, read at each poll): which bar has closed is the venue's call.

    Live, it is this machine's clock within NTP; against the venue simulator in a rehearsal it is years behind
    and runs many times faster, and the bars it has closed are the only ones it serves.  When the exchange
    cannot be asked, its offset from the local clock at the last good read stands in (local clock at first),
    so one failed read never makes ingest jump to another date.
    """

    def __init__(self, exchange_id: str, api_url: str | None, logger: logging.Logger) -> None:
        self.exchange_id = exchange_id
        self.api_url = api_url
        self.logger = logger
        self._client: Any = None
        self._offset_ms = 0
        self._failing = False

    def __call__(self) -> int:
        local = int(time.time() * 1000)
        try:
            if self._client is None:
                self._client = make_exchange(self.exchange_id, api_url=self.api_url, timeout_s=5.0)
            server = int(self._client.fetch_time())
        except Exception as exc:  # unreachable, or an exchange ccxt cannot ask for its time
            if not self._failing:
                warn(self.logger, "VENUE_CLOCK", "exchange time unreadable; using its last known offset",
                     exchange=self.exchange_id, offset_ms=self._offset_ms, error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return local + self._offset_ms
        self._failing = False
        self._offset_ms = server - local
        return server


@dataclass
class SyncSource:
    """Poll the provider chain; one cycle per newly closed bar, published only when the universe is complete,
    with the venue's market rules (``services/ingest/venue.py``: the universe in force and its rules)."""

    settings: Settings
    symbols: list[str] | None  # a fixed universe (AURA_SYMBOLS); None or empty: the venue's, by the screen
    last_done_ms: int | None
    logger: logging.Logger
    exchange: str = "binance"
    config: IngestConfig | None = None  # None: from the AURA_* environment
    clock_ms: Callable[[], int] | None = None  # None: the exchange's clock (VenueClock)
    venue: VenueUniverse | None = None  # None: made on first use, from the settings and config
    # The portfolio's holdings, as the executor's newest snapshot says (the service keeps this current): held
    # pairs stay in the universe until sold, or are reported once the venue stops trading them.
    held: set[str] = field(default_factory=set)
    # Built once and reused: each provider keeps its loaded markets and its circuit breaker between polls.
    _providers: list[Provider] | None = field(default=None, init=False)
    # A closed bar whose snapshot was stale: the cursor stays before it and every poll asks for it again,
    # because its data may still arrive (one 5xx at the bar boundary) until a newer bar has closed.
    _retrying_ms: int | None = field(default=None, init=False)
    # The newest bar the venue's clock has closed and this source has not completed: (its open time, the
    # monotonic time it was first seen), and why its last attempt was stale (readiness).
    _pending: tuple[int, float] | None = field(default=None, init=False)
    _why: str = field(default="", init=False)

    @property
    def exhausted(self) -> bool:
        return False

    def describe(self) -> str:
        retrying = f", retrying stale bar {self._retrying_ms}" if self._retrying_ms is not None else ""
        return f"sync source, last completed bar {self.last_done_ms}{retrying}"

    def readiness(self, patience_s: float) -> tuple[bool, str]:
        """Red once the newest bar the venue has closed has waited more than ``patience_s`` to be published
        complete (market rules unreadable, candles missing, a provider down): downstream then plans on nothing
        newer, and /readyz must say so rather than stay green over a source that is stuck."""
        if self._pending is None:
            return True, self.describe()
        bar, since = self._pending
        waited = monotonic() - since
        text = f"bar {cycle_id_for(self.settings.timeframe, bar)} closed by the venue, not published complete for " \
               f"{waited:.0f}s" + (f": {self._why}" if self._why else "")
        return waited <= patience_s, f"{self.describe()}; {text}"

    async def next_step(self) -> ReplayStep | None:
        s = self.settings
        iv = interval_ms(s.timeframe)
        config = self.config or IngestConfig.from_env(home=str(s.home_path))
        if self.clock_ms is None:
            self.clock_ms = VenueClock(self.exchange, config.api_urls.get(self.exchange), self.logger)
        now_ms = await asyncio.to_thread(self.clock_ms)  # the venue's clock is an HTTP request
        last_closed = last_closed_open(now_ms, iv)
        if self._retrying_ms is not None and last_closed > self._retrying_ms:
            # Trading a stale bar now would act on a past price while a newer bar is already known.
            warn(self.logger, "BAR_SKIPPED", "stale bar never completed before a newer bar closed; moving on to "
                 "the newest", cycle_id=cycle_id_for(s.timeframe, self._retrying_ms),
                 next_cycle_id=cycle_id_for(s.timeframe, last_closed))
            self._retrying_ms = None
        if self.last_done_ms is not None and self.last_done_ms >= last_closed:
            self._pending = None
            return None  # nothing new has closed yet
        if self._pending is None:  # a bar newer than an uncompleted one keeps the wait running: still stuck
            self._pending, self._why = (last_closed, monotonic()), ""
        elif self._pending[0] != last_closed:
            self._pending = (last_closed, self._pending[1])
        step = await self._step(now_ms, last_closed, iv, config)
        if step.snapshot is None:
            self._why = step.reason or f"candles missing for {', '.join(step.missing[:10])}"
        else:
            self._pending = None  # published complete: a cycle stuck downstream is not this source's to report
        return step

    async def _step(self, now_ms: int, last_closed: int, iv: int, config: IngestConfig) -> ReplayStep:
        s = self.settings
        cycle_id = cycle_id_for(s.timeframe, last_closed)
        if self.venue is None:
            self.venue = VenueUniverse(s, config, self.logger, self.exchange, fixed=tuple(self.symbols or ()) or None)
        try:
            # The universe and the rules come first: they say which candles this cycle needs.
            view = await asyncio.to_thread(self.venue.update, now_ms, set(self.held))
        except MarketsUnavailable as exc:
            return ReplayStep(-1, last_closed, cycle_id, None, self.venue.expected(),
                              reason=f"market rules unreadable: {exc}"[:400])
        symbols = list(view.symbols)
        since = last_closed - (s.snapshot_bars + 10) * iv
        # The chain does blocking HTTP and file I/O: keep it off the event loop so health stays responsive.
        if self._providers is None:
            self._providers = build_providers(config, self.exchange)
        report = await asyncio.to_thread(sync, symbols, self.exchange, s.timeframe, since, None, config, now_ms,
                                         providers=self._providers)
        info(self.logger, "SYNC", "provider chain ran", complete=report.complete, requests=report.requests,
             rows_added=report.rows_added, seconds=round(report.seconds, 3))
        if not report.complete:
            missing = tuple(sym for sym, r in report.symbols.items() if not r.complete)
            warn(self.logger, "DATA_STALE", "cache incomplete after sync", cycle_id=cycle_id, missing=list(missing))
            self.venue.recheck(missing)  # a pair delisted since the last read: its klines are refused
            return ReplayStep(-1, last_closed, cycle_id, None, missing)
        # From the synced range's start, ten bars more than the window: replay_step then keeps the last
        # snapshot_bars *rows*, as the replay and the backtest count them.  Cut by time, a venue-wide outage (no
        # candle for any pair: 28 in the hourly data) left the live window that many bars short (an audit).
        panel = load_panel(config.cache_root, self.exchange, s.timeframe, symbols, start_ms=since,
                           end_ms=last_closed)
        if len(panel.timestamps) == 0 or int(panel.timestamps[-1]) != last_closed:
            return ReplayStep(-1, last_closed, cycle_id, None, tuple(symbols))
        lacking = [sym for j, sym in enumerate(panel.symbols) if np.isnan(panel.close[-1, j])]
        if lacking:
            # The exchange confirmed it has no candle for the decision bar (a pair paused for that hour).  A
            # holding is never planned without its price: the bar waits.  A pair not held sits this cycle out,
            # said out loud (the snapshot below leaves it out).
            held = sorted(set(lacking) & self.held)
            if held:
                warn(self.logger, "DECISION_GAP", "a held pair has no candle for the decision bar", cycle_id=cycle_id,
                     held=held)
                self.venue.recheck(held)  # halted since the last read: read again, it leaves the universe
                return ReplayStep(-1, last_closed, cycle_id, None, tuple(held),
                                  reason=f"no candle for the decision bar of held {', '.join(held)}")
            warn(self.logger, "DECISION_GAP", "pairs with no candle for the decision bar sit this cycle out",
                 cycle_id=cycle_id, symbols=lacking)
        step = replay_step(panel, len(panel.timestamps) - 1, s.snapshot_bars, s.timeframe)
        if step.snapshot is not None and self._retrying_ms == last_closed:
            info(self.logger, "DATA_RECOVERED", "stale bar is complete on a later poll", cycle_id=cycle_id)
        return replace(step, rules=view.rules)

    def universe_detail(self) -> str:
        return self.venue.describe() if self.venue is not None else "venue universe not read yet"

    def done(self, step: ReplayStep) -> bool:
        """End ``step``'s cycle; True: the bar is done and the cursor is to be persisted.

        A stale step is not done: the next poll asks the providers for the same bar again (see ``next_step``).
        """
        if step.snapshot is None:
            self._retrying_ms = step.as_of_ms
            return False
        self._retrying_ms = None
        self.last_done_ms = step.as_of_ms
        if self._pending is not None and self._pending[0] <= step.as_of_ms:
            self._pending = None
        return True


def fixed_symbols(settings: Settings) -> list[str] | None:
    """AURA_SYMBOLS as a list of unified symbols: an explicit, fixed universe; None when unset (sync mode: the
    venue's screen).  Written as the CLI takes them (BTC/USDT, BTC_USDT or BTCUSDT): taken verbatim, ETH_USDT
    matched no market and left the universe as "not trading" (found by an audit).  ConfigError for one that is
    no pair at all."""
    symbols: list[str] = []
    for sym in (s for s in settings.symbols.split(",") if s.strip()):
        try:
            symbols.append(unified_symbol(sym))
        except ValueError as exc:
            raise ConfigError(f"setting symbols (env AURA_SYMBOLS): {exc}") from exc
    return list(dict.fromkeys(symbols)) or None
