"""The cost rate risk's gates price a trade at: a fee plus slippage, as a fraction of the notional.

It budgets every buy (fee and slippage, or the last buy of a full rebalance overdraws the cash) and is the
cost side of the cost-benefit gate.  Where the fee comes from follows who charges it:

* dry run: ``AURA_PAPER_FEE_RATE`` + ``AURA_PAPER_SLIPPAGE_BPS``, exactly what the paper broker charges;
* live: the venue's taker fee (its public markets through ccxt, ``PriceSource.taker_fee``: the published
  schedule; an account's own tier needs its keys, which only the executor holds) + ``AURA_PAPER_SLIPPAGE_BPS``.
  AURA_PAPER_FEE_RATE plays no part: the paper broker does not trade.  Risk plans nothing live until the fee
  has been read (``/readyz`` says so); it is read again every ``AURA_MARKETS_REFRESH_S``, and a failed re-read
  keeps the last one read, logged, since a published schedule changes rarely and never without notice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.risk.prices import PriceSource
from shared.config import Settings
from shared.logging import info, warn

BOOT_RETRY_S = (1.0, 30.0)  # first and longest wait between reads of the fee at boot


@dataclass(frozen=True)
class CostRate:
    fee: float
    slippage_bps: float
    source: str  # where the fee comes from, for logs and /readyz
    read_at: float  # time.monotonic() of the read

    @property
    def rate(self) -> float:
        return self.fee + self.slippage_bps / 10_000.0

    def describe(self) -> str:
        return f"{self.rate:.6g} = fee {self.fee:.6g} ({self.source}) + slippage {self.slippage_bps:g} bps"


class Costs:
    def __init__(self, settings: Settings, prices: PriceSource, logger: logging.Logger) -> None:
        self.settings = settings
        self.prices = prices
        self.logger = logger
        self.live = not settings.dry_run
        self._current: CostRate | None = None
        if not self.live:
            self._current = CostRate(settings.paper_fee_rate, settings.paper_slippage_bps,
                                     "paper broker, AURA_PAPER_FEE_RATE", time.monotonic())
        self._error: str | None = None

    def readiness(self) -> tuple[bool, str]:
        if self._current is None:
            return False, f"waiting for {self.settings.exchange_id}'s taker fee: {self._error or 'not read yet'}"
        text = self._current.describe()
        return True, text + (f"; last re-read failed: {self._error}" if self._error else "")

    async def _read(self) -> CostRate:
        fee = await self.prices.taker_fee()
        if fee is None or not 0 <= fee < 0.05:  # the same bounds as AURA_PAPER_FEE_RATE
            raise ValueError(f"taker fee {fee!r} is not a fee")
        return CostRate(float(fee), self.settings.paper_slippage_bps,
                        f"{self.settings.exchange_id} taker fee, its public markets", time.monotonic())

    async def boot(self, stop: asyncio.Event) -> CostRate | None:
        """The rate in force from the start (live: once the venue's fee has been read); None if stopped first."""
        wait = BOOT_RETRY_S[0]
        while self._current is None:
            try:
                self._current = await self._read()
                self._error = None
            except Exception as exc:
                self._error = f"{type(exc).__name__}: {exc}"[:300]
                warn(self.logger, "COST_RATE", "venue taker fee unreadable; no live plan until it is read",
                     exchange=self.settings.exchange_id, error=self._error, retry_s=wait)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    return None
                except TimeoutError:
                    wait = min(BOOT_RETRY_S[1], wait * 2)
        info(self.logger, "COST_RATE", f"cost gate prices trades at {self._current.describe()}",
             fee=self._current.fee, slippage_bps=self._current.slippage_bps, rate=self._current.rate,
             source=self._current.source, live=self.live)
        return self._current

    async def current(self) -> CostRate:
        """The rate for the decision about to be made; live, re-read once it is ``markets_refresh_s`` old."""
        now = time.monotonic()
        if self._current is None:
            raise RuntimeError("Costs.current() before boot()")
        if not self.live or now - self._current.read_at < self.settings.markets_refresh_s:
            return self._current
        try:
            fresh = await self._read()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"[:300]
            warn(self.logger, "COST_RATE", "venue taker fee re-read failed; keeping the last one read",
                 error=self._error, rate=self._current.rate)
            # Asked again at the next refresh period, not at every decision in between.
            self._current = CostRate(self._current.fee, self._current.slippage_bps, self._current.source, now)
            return self._current
        if fresh.fee != self._current.fee:
            info(self.logger, "COST_RATE", f"venue taker fee changed: cost gate now {fresh.describe()}",
                 fee=fresh.fee, previous_fee=self._current.fee, rate=fresh.rate)
        self._current, self._error = fresh, None
        return fresh
