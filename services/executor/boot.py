"""What the executor needs before its first plan: a journal it can write, and its broker.

A journal that cannot be opened or written at start (a read-only file system, a full disk, a lock another
process holds) is waited for with /readyz red and the reason, never a crash loop: a supervisor restarting the
process every few seconds fixes nothing and hides the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import IO, Any

from aura.strategy.types import MarketRule
from services.executor.brokers.base import Broker, OrderState
from services.executor.brokers.paper import QUOTE, PaperBroker, base_asset
from services.executor.journal import Journal, journal_fault
from services.executor.journal_owner import JournalHeld, own_journal
from services.executor.outage import is_exchange_outage
from services.executor.portfolio import portfolio_from_fills
from services.ingest.replay import load_market_rules
from shared.config import Settings
from shared.health import HealthState
from shared.logging import error, info
from shared.service import ServiceContext

RETRY_S = 2.0


async def open_journal(ctx: ServiceContext) -> Journal | None:
    """The journal, once it can be opened and written; None if the service is stopped meanwhile."""
    path = ctx.settings.journal_path
    fault: str | None = None
    owner: IO[str] | None = None  # the journal's lock (journal_owner.py), taken first and kept across retries
    ctx.health.checks["journal"] = lambda: (False, f"cannot open the journal ({fault})" if fault else "opening")
    while not ctx.stop.is_set():
        try:
            owner = owner or own_journal(path)
            journal = Journal(path)
        except JournalHeld as exc:
            if fault != str(exc):  # a standby executor may wait for hours: said once, not every retry
                error(ctx.logger, "JOURNAL_FAULT", "another executor runs on this journal; waiting", path=str(path),
                      error=str(exc))
            fault = str(exc)
        except Exception as exc:
            fault = journal_fault(exc)
            if fault is None:
                raise
            error(ctx.logger, "JOURNAL_FAULT", "journal cannot be opened for writing; waiting", path=str(path),
                  error=fault)
        else:
            if fault is not None:
                info(ctx.logger, "JOURNAL_FAULT", "journal writable again", path=str(path))
            journal.owner = owner  # released with the journal (Journal.close)
            return journal
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), timeout=RETRY_S)
    if owner is not None:
        owner.close()
    return None


async def boot_when_possible(ctx: ServiceContext, executor: Any) -> None:
    """``executor.boot()``, tried again while the journal cannot be written (disk full) or the exchange does not
    answer: wait with /readyz red and the reason, never a crash loop (boot is idempotent)."""
    while not ctx.stop.is_set():
        try:
            await executor.boot()
            executor.io_fault = None
            executor.outage.answered()
            return
        except Exception as exc:
            with contextlib.suppress(Exception):
                executor.journal.rollback()
            if is_exchange_outage(exc):
                executor.outage.failed(exc, at="boot")
            else:
                executor.io_fault = journal_fault(exc)
                if executor.io_fault is None:
                    raise
                error(ctx.logger, "JOURNAL_FAULT", "journal cannot be written at boot; waiting",
                      error=executor.io_fault)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), timeout=RETRY_S)


class TimedBroker:
    """The broker, each order request's round trip observed as ``aura_order_seconds`` (what an operator watches
    when the exchange slows down); everything else passes straight through."""

    def __init__(self, inner: Broker, health: HealthState) -> None:
        self.inner, self.health = inner, health

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def place_market_order(self, symbol: str, side: str, qty: float, client_order_id: str, ref_price: float,
                                 quote_amount: float | None = None) -> OrderState:
        started = time.monotonic()
        try:
            return await self.inner.place_market_order(symbol, side, qty, client_order_id, ref_price, quote_amount)
        finally:
            self.health.observe("order_seconds", time.monotonic() - started, side=side)


async def paper_rules(settings: Settings, logger: logging.Logger) -> dict[str, MarketRule]:
    """The rules the paper venue enforces: the bundled markets' real Binance rules on the replay; on live data
    (a shadow run), the venue's own public rules, the ones ingest carries in every DataReady."""
    if settings.ingest_source != "sync":
        return load_market_rules(Path(settings.replay_dir) / "markets.json")
    from services.executor.brokers.ccxt_broker import CcxtBroker
    from services.executor.brokers.ccxt_client import venue_url  # public markets only: no keys

    venue = CcxtBroker(settings.exchange_id, base_url=venue_url(settings), testnet=settings.testnet, logger=logger)
    try:
        return await venue.load_markets()
    finally:
        await venue.close()


async def make_broker(settings: Settings, logger: logging.Logger, journal: Journal) -> Broker:
    if settings.dry_run:
        rules = await paper_rules(settings, logger)
        initial = journal.initial_cash()
        pf = portfolio_from_fills(initial if initial is not None else settings.paper_cash_usdt, journal.all_fills())
        balances = {QUOTE: pf.cash, **{base_asset(sym): q for sym, q in pf.holdings.items()}}
        return PaperBroker(balances, rules, settings.paper_fee_rate, settings.paper_slippage_bps)
    from services.executor.live import make_live_broker  # ccxt: imported only where it trades

    return make_live_broker(settings, logger)
