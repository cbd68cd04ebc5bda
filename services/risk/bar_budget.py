"""What risk has already sent in the current decision bar, per symbol and side, kept across a restart of risk.

The participation cap (``aura.strategy.capacity``) bounds a leg by a share of the decision bar's volume.  A
cycle plans once per bar, but the risk tick may plan again between cycles (stop-loss exits, a kill-switch
liquidation the cap cut short), on the same bar's volume: the cap is on the bar, so what earlier plans on it
sent on the same side is taken off (a cycle's buy must not use up the room of a stop-loss exit).  Counted when
a plan is published (as if it filled in full).  A plan that then ends without every leg filled (refused,
rejected, partial, or never closed) gives back what its exits did not sell (``Risk.gone_unfilled``): a stop-loss
the venue rejected is sent again by the next tick, never held back for the bar, and the part of an exit that did
fill keeps its room taken; its buys stay counted (more careful, never less).

The count is kept in the state bucket ``aura_state`` under ``risk.bar_sent``, as the latch ``risk.halted`` is:
written by risk alone (bus permissions), signed with risk's key, verified when read.  In memory only, a restart
mid-bar (crash, deploy, kill -9) would hand the bar's room out a second time.

* Write-ahead: the count with a plan's legs added is stored *before* the plan is published.  A crash between
  the two counts a plan that never went out: the rest of the bar is more careful, never less.  Memory takes the
  new count as soon as it is stored.  If the publish then fails, its buys stay counted (a publish that timed out
  may still have reached the stream) and its exits are given back (``unsend``): a stop-loss is never held back
  for a bar by a plan that may not have gone out.  A failed write raises (logged ``[BAR_BUDGET]``) and the plan
  is not published: a target is retried and in the end dead-lettered (``shared.consumer``), a tick is logged
  and tried again at the next period, as when the latch cannot be written.  A plan without legs sends nothing
  and writes nothing.
* Read once, at boot (risk is the key's only writer).  A count for another bar than the one decided on is
  dropped, as in memory.  No key: nothing sent yet (a new bus, or the first start with this module).
* A value that does not decode, verify or make sense (garbage, a document written with risk's bus credential
  but not its signing key, a negative or non-finite quantity): what the bar already sent is unknown.  Logged
  ``[FORGED_STATE]`` (an operator event, as for the latch) and counted ``forged_state``.  Then, on the first bar
  risk decides on after that start:

  - buys count the bar's whole room as used: no risk-increasing leg on that bar.  Missing one bar of entries
    costs an opportunity; handing the room out again could double the bar's footprint with real money, and is
    exactly what a forger of the count would be after;
  - sells count nothing as sent.  Exits are the stop-loss, the take-profit and the kill-switch's liquidation:
    a document nobody can vouch for must never hold capital protection back for a bar (a day on 1d bars).  The
    price is bounded: at worst that one bar's exits trade up to twice the cap.

  The closed buy side is stored, signed, as soon as risk knows that bar (``seal``, before it plans on it), so
  another restart on the same bar keeps it closed; the next bar opens again and the stored value is good from
  then on, whether or not anything was sent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext

from shared.contracts import STATE_BUCKET
from shared.health import HealthState
from shared.kv_chain import UNCHAINED, read_chained, write_chained
from shared.logging import error, info
from shared.signing import SignatureError, sign_struct, verify_layouts
from shared.state_keys import BAR_SENT_KEY
from shared.wire import decode_document


class SentLeg(Protocol):
    symbol: str
    side: str
    qty: float


def whole_room(volume: float, max_participation: float) -> float:
    """The quantity that, counted as sent, leaves a bar that traded ``volume`` no room under the cap (capacity.py
    takes the room as ``volume - sent / max_participation``; rounding must not leave a sliver of it)."""
    used = max_participation * volume
    for _ in range(8):  # one step up is all the rounding ever needs; the bound only guards a degenerate cap
        if not volume - used / max_participation > 0:
            return used
        used = math.nextafter(used, math.inf)
    return 2.0 * used


@dataclass
class SentInBar:
    bar_ms: int | None = None  # open time of the decision bar counted
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # base quantity per (symbol, side)
    # What the bar sent could not be read at boot: its buy side counts as used up (module docstring).  With
    # bar_ms None, the first bar decided on is the one closed; a newer bar opens again.
    buys_closed: bool = False

    def on(self, bar_ms: int | None, volumes: Mapping[str, float] | None = None,
           max_participation: float = math.inf) -> dict[tuple[str, str], float]:
        """What was sent on the bar opening at ``bar_ms``: a newer bar starts from nothing; None (the bar could not
        be read) keeps the count, so a failed read never hands out the bar's room a second time.  With the buy
        side closed, each buy of a symbol in ``volumes`` counts the room ``max_participation`` leaves it."""
        if bar_ms is not None and bar_ms != self.bar_ms:
            closed = self.buys_closed and self.bar_ms is None  # an unknown count closes the first bar seen only
            self.bar_ms, self.sent, self.buys_closed = bar_ms, {}, closed
        counts = dict(self.sent)
        if self.buys_closed and math.isfinite(max_participation):
            for symbol, volume in (volumes or {}).items():
                if math.isfinite(volume):  # no volume: capacity does not cap the leg, whatever the count says
                    key = (symbol, "buy")
                    counts[key] = max(counts.get(key, 0.0), whole_room(volume, max_participation))
        return counts

    def after(self, bar_ms: int | None, legs: Iterable[SentLeg]) -> SentInBar:
        """The count once ``legs`` are sent on the bar ``bar_ms`` (this one is left as it is)."""
        new = SentInBar(self.bar_ms, dict(self.sent), self.buys_closed)
        new.on(bar_ms)
        for leg in legs:
            key = (leg.symbol, leg.side)
            new.sent[key] = new.sent.get(key, 0.0) + float(leg.qty)
        return new

    def add(self, bar_ms: int | None, legs: Iterable[SentLeg]) -> None:
        new = self.after(bar_ms, legs)
        self.bar_ms, self.sent, self.buys_closed = new.bar_ms, new.sent, new.buys_closed


# --- kept in aura_state ------------------------------------------------------------------------------------------


class SentQty(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    side: str  # "buy" | "sell"
    qty: float


class _SentDocV1(msgspec.Struct, frozen=True, kw_only=True):
    """The count as risk signed it before it named the revision it replaces."""

    bar_ms: int | None
    sent: tuple[SentQty, ...] = ()
    buys_closed: bool = False
    updated_at_ms: int = 0
    signature: str = ""
    key_id: str = ""


class SentDoc(_SentDocV1, frozen=True, kw_only=True):
    prev_revision: int = UNCHAINED  # the revision of risk.bar_sent this one replaced (shared.kv_chain)


def _verified_doc(raw: bytes, risk_key: Ed25519PublicKey) -> SentDoc:
    try:
        doc = decode_document(raw, SentDoc)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SignatureError(f"malformed SentDoc: {exc}") from exc
    verify_layouts(doc, raw, (_SentDocV1,), {"risk": risk_key})  # a count signed before it named its predecessor
    return doc


def verified_count(raw: bytes, risk_key: Ed25519PublicKey) -> SentInBar:
    """The stored count, decoded, verified against risk's key and checked; SignatureError if any of it fails.
    (Whether it is risk's newest is read_count's question.)"""
    return _count(_verified_doc(raw, risk_key))


def _count(doc: SentDoc) -> SentInBar:
    sent: dict[tuple[str, str], float] = {}
    for x in doc.sent:
        # Signed by risk, so a bad quantity is a bug of ours: still refused, a NaN would cap nothing (capacity.py).
        if x.side not in ("buy", "sell") or not (math.isfinite(x.qty) and x.qty >= 0) or (x.symbol, x.side) in sent:
            raise SignatureError(f"invalid count {x.side} {x.qty!r} {x.symbol} (or counted twice)")
        sent[(x.symbol, x.side)] = x.qty
    return SentInBar(doc.bar_ms, sent, doc.buys_closed)


async def read_count(js: JetStreamContext, risk_key: Ed25519PublicKey) -> tuple[SentInBar, str, int]:
    """(count, problem, revision of the key's last entry).  Never written: nothing sent.  Unreadable, deleted or not
    risk's newest (shared.kv_chain): a count whose buy side is closed, the problem named.  A bus failure raises:
    risk does not start on a count it could not look for."""
    doc, head, problem = await read_chained(js, STATE_BUCKET, BAR_SENT_KEY, lambda raw: _verified_doc(raw, risk_key))
    if problem:
        return SentInBar(buys_closed=True), problem, head.revision
    if doc is None:
        return SentInBar(), "", 0
    try:
        return _count(doc), "", head.revision
    except SignatureError as exc:
        return SentInBar(buys_closed=True), str(exc), head.revision


async def write_count(js: JetStreamContext, count: SentInBar, key: Ed25519PrivateKey,
                      prev_revision: int) -> tuple[int, int]:
    """Store ``count``, signed, on top of ``prev_revision``: (its revision, the revision of a write by somebody else
    it went on top of instead, or 0; kv_chain.write_chained)."""
    sent = tuple(SentQty(symbol=symbol, side=side, qty=qty) for (symbol, side), qty in sorted(count.sent.items()))

    def signed(prev: int) -> bytes:
        doc = SentDoc(bar_ms=count.bar_ms, sent=sent, buys_closed=count.buys_closed,
                      updated_at_ms=int(time.time() * 1000), prev_revision=prev)
        return msgspec.json.encode(sign_struct(doc, key))

    return await write_chained(js, STATE_BUCKET, BAR_SENT_KEY, signed, prev_revision)


class BarBudget:
    """The count risk plans with: read at boot (``load``), stored before each plan that sends something."""

    def __init__(self, js: JetStreamContext, key: Ed25519PrivateKey, count: SentInBar, revision: int,
                 max_participation: float, health: HealthState, logger: logging.Logger) -> None:
        self.js, self.key, self.count, self.health, self.logger = js, key, count, health, logger
        self.revision = revision  # of the count read or written last: the next write goes on top of it
        self.max_participation = max_participation
        # Exits given back in memory (``unsend``) and not stored yet: ``seal`` stores them before the next
        # decision, or a restart would read them as sent and hold the stop-loss back for the bar after all.
        self.unstored = False

    @classmethod
    async def load(cls, js: JetStreamContext, key: Ed25519PrivateKey, max_participation: float,
                   health: HealthState, logger: logging.Logger) -> BarBudget:
        count, problem, revision = await read_count(js, key.public_key())
        if problem:
            health.inc("forged_state")
            error(logger, "FORGED_STATE", "the participation cap's count of the bar does not verify; the next bar "
                  "decided on allows no buy (its room counts as used), exits are not held back", error=problem)
        else:
            info(logger, "BAR_BUDGET", "what the decision bar already sent, read at boot", bar_ms=count.bar_ms,
                 sent={f"{side} {symbol}": qty for (symbol, side), qty in sorted(count.sent.items())},
                 buys_closed=count.buys_closed)
        return cls(js, key, count, revision, max_participation, health, logger)

    def on(self, bar_ms: int | None, volumes: Mapping[str, float]) -> dict[tuple[str, str], float]:
        return self.count.on(bar_ms, volumes, self.max_participation)

    async def seal(self, bar_ms: int | None) -> None:
        """Before a decision: exits given back and not stored yet are stored.  After a count that did not verify,
        store the bar whose buys it closes, signed, as soon as that bar is known: a restart on the same bar keeps
        it closed, one on a later bar finds a good count.  Left to the next
        plan with legs, a bad value would close the first bar of every start (for ever, if no plan sends
        anything, as with a flat book whose buys are all closed)."""
        if self.unstored:
            try:
                await self._store(self.count)
                self.unstored = False
            except Exception as exc:  # memory has it; the next seal or plan tries again
                self.health.inc("bar_budget_write_errors")
                error(self.logger, "BAR_BUDGET", "the exits given back could not be stored", error=f"{exc}"[:300])
        if not (self.count.buys_closed and self.count.bar_ms is None and bar_ms is not None):
            return
        sealed = self.count.after(bar_ms, [])
        try:
            await self._store(sealed)
        except Exception as exc:  # memory still closes the bar; the next plan's write carries it
            self.health.inc("bar_budget_write_errors")
            error(self.logger, "BAR_BUDGET", "the bar whose buys are closed could not be stored", bar_ms=bar_ms,
                  error=f"{type(exc).__name__}: {exc}"[:300])
            return
        self.count, self.unstored = sealed, False

    def unsend(self, bar_ms: int | None, legs: Iterable[SentLeg]) -> None:
        """A plan whose publish failed may never reach the executor: its exits are given back (in memory, stored by
        the next ``seal`` or ``record``), so a stop-loss or a liquidation is not held back for the bar by it.  Its buys
        stay counted: had it gone out after all, they must not be sent twice.  (Had its exits gone out too, that
        bar's exits trade up to twice the cap: the price of never holding capital protection back.)"""
        if bar_ms is not None and bar_ms != self.count.bar_ms:
            return
        for leg in legs:
            key = (leg.symbol, leg.side)
            if leg.side == "sell" and key in self.count.sent:
                self.count.sent[key] = max(0.0, self.count.sent[key] - float(leg.qty))
                self.unstored = True

    async def record(self, bar_ms: int | None, legs: Iterable[SentLeg]) -> None:
        """Store the count with ``legs`` added, before the plan that sends them is published; if it cannot be
        stored, log it and raise, so that plan is not published."""
        legs = list(legs)
        if not legs:
            return
        new = self.count.after(bar_ms, legs)
        try:
            await self._store(new)
        except Exception as exc:
            self.health.inc("bar_budget_write_errors")
            error(self.logger, "BAR_BUDGET", "the bar's count could not be stored; the plan is not published",
                  bar_ms=bar_ms, error=f"{type(exc).__name__}: {exc}"[:300])
            raise
        self.count, self.unstored = new, False  # built on memory: any give-back is in it

    async def _store(self, count: SentInBar) -> None:
        self.revision, overwritten = await write_count(self.js, count, self.key, self.revision)
        if overwritten:  # risk counts in memory after boot: what it holds is the count, whatever was put there
            self.health.inc("forged_state")
            error(self.logger, "FORGED_STATE", "somebody else wrote the bar's count since risk wrote it; risk's own "
                  "count is stored on top", overwritten_revision=overwritten, bar_ms=count.bar_ms)
