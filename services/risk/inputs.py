"""Everything risk reads from the bus, each verified before use: the executor's snapshot (signed), the
kill-switch latch (signed by risk, reset only by a signed operator request), ingest's newest announcement and
the candle object it names (digest-checked), and parameter versions (signed by the optimizer or operator).

A compromised peer keeps its own bus rights; what it publishes is checked here, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from aura.strategy.capacity import decision_bar_volumes
from aura.strategy.params import StrategyParams
from aura.strategy.types import Panel
from services.risk.latch import UNVERIFIABLE_BY, LatchDoc, applied, read_latch, write_latch
from services.risk.tick import Latch, latch_view
from shared.allowance import SaidOnce
from shared.bus import last_message, newest_valid
from shared.candles import decode_panel
from shared.config import Settings
from shared.consumer import Reject
from shared.contracts import ContractError, DataReady, PortfolioSnapshot, decode
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_key, trusted_keys
from shared.health import HealthState
from shared.live_params import ParamsError, read_version
from shared.logging import error, warn
from shared.objects import ObjectTooLarge, verified_candles
from shared.operator_requests import RESET_KEY, read_request
from shared.signing import SignatureError, verify_struct

SEEN_SNAPSHOTS = 4096  # snapshot ids remembered with their content digest


def replayed(snap: PortfolioSnapshot, basis: PortfolioSnapshot, seen_before: bool) -> bool:
    """Whether ``snap`` is an older book than ``basis``: its commit is one of the points of ``basis``'s equity
    history (a bar cycle's), older than all of them, or older than ``basis`` and a book risk has read before (a
    tick's exit, an adoption: no history points).  Not its commit time alone: an executor whose clock stepped
    back commits a new book "earlier", which is neither a point of the history nor one seen before."""
    history = basis.equity_history_ms
    older = snap.committed_at_ms < basis.committed_at_ms
    before_history = bool(history) and snap.committed_at_ms < history[0]
    return (older and seen_before) or snap.committed_at_ms in history or before_history


class RiskInputs:
    def __init__(self, js: JetStreamContext, kv: KeyValue, settings: Settings, health: HealthState,
                 logger: logging.Logger) -> None:
        self.js, self.kv, self.health, self.logger = js, kv, health, logger
        layout = settings.keys
        self.key = signing_key(layout, "risk")
        self.own_public = self.key.public_key()
        self.executor_key = trusted_key(layout, "risk", "executor")
        self.params_keys = trusted_keys(layout, "risk", PARAMS_SIGNERS)
        self.timeframe = settings.timeframe  # parameter versions made for other bars are refused (bad_params)
        self.max_loss_bound = settings.max_loss_bound  # and those outside the operator's loss envelope
        self.said = SaidOnce()  # a refused reset request is said and counted once per bad write, not every tick
        self.seen: OrderedDict[str, str] = OrderedDict()
        self._panel: tuple[str, Panel] | None = None
        # The newest snapshot and latch that verified: a forged newer one is refused and these stay in force
        # (the executor's own book has not changed because somebody published a fake of it).
        self.last_snapshot: PortfolioSnapshot | None = None
        self.last_latch: LatchDoc | None = None
        self.latch_revision = 0  # the revision of risk.halted read or written last: the next write goes on top of it

    # -- the executor's portfolio ---------------------------------------------------------------------------
    async def snapshot(self) -> PortfolioSnapshot | None:
        """The newest snapshot that verifies.  A newest one that does not is logged [FORGED_SNAPSHOT] and
        counted, and the last verified one stays the basis (None if none verified yet).  So does it when the
        stream holds none: the executor publishes one per cycle, and after 30 days without a cycle (ingest
        down) its last one ages out of the stream; the book it describes has not changed, and the stop-loss
        and kill-switch ticks must go on checking it.  (A risk started in such a month finds the one the executor
        says again every day: services/executor/service.py SNAPSHOT_REFRESH_S.)"""
        raw = await last_message(self.js, PortfolioSnapshot.SUBJECT)
        if raw is None:
            return self.last_snapshot
        try:
            snap = decode(raw, PortfolioSnapshot)
            verify_struct(snap, {"executor": self.executor_key})
        except (ContractError, SignatureError) as exc:
            return self._forged(f"newest snapshot refused: {exc}")
        content = hashlib.sha256(msgspec.json.encode(snap)).hexdigest()
        known = self.seen.get(snap.snapshot_id)
        if known is not None and known != content:
            return self._forged(f"snapshot {snap.snapshot_id} seen before with other contents")
        last = self.last_snapshot
        if last is not None and snap.snapshot_id != last.snapshot_id and replayed(snap, last, known is not None):
            # A genuine, signed, older book published again (by a holder of the executor's bus credential, under a
            # new message id): as the basis it would hide every loss since from the kill-switch and the stops.
            # (An executor whose journal lost its newest commits says an older book again too: refused here,
            # loudly, until it commits a new one, which the next cycle's abort makes it do, or risk restarts.)
            return self._forged(f"snapshot {snap.snapshot_id} committed at {snap.committed_at_ms} is an earlier "
                                f"point of the basis in force ({last.snapshot_id}, {last.committed_at_ms}): a replay")
        self.seen[snap.snapshot_id] = content
        self.seen.move_to_end(snap.snapshot_id)
        while len(self.seen) > SEEN_SNAPSHOTS:
            self.seen.popitem(last=False)
        self.last_snapshot = snap
        return snap

    def _forged(self, detail: str) -> PortfolioSnapshot | None:
        self.health.inc("forged_snapshots")
        error(self.logger, "FORGED_SNAPSHOT", detail, basis=self.last_snapshot.snapshot_id if self.last_snapshot
              else None)
        return self.last_snapshot

    # -- the kill-switch latch ------------------------------------------------------------------------------
    async def latch(self) -> Latch:
        """The latch in force, after applying an operator reset newer than the last one applied.

        A stored latch that does not verify, or that vanished after this process had seen one stored, leaves the
        last verified one in force; with none (a start on a tampered bucket) it counts as latched: fail closed,
        until an operator reset rewrites it signed.
        """
        stored_before = self.latch_revision
        doc, self.latch_revision, problem = await read_latch(self.js, self.own_public)
        if not problem and stored_before and not self.latch_revision:
            # Read as "never written" after this process read or wrote a stored latch: the bucket's history was
            # removed under it (a stream update by whoever manages JetStream), which must not read as not halted.
            problem = f"the latch stored at revision {stored_before} was erased from the bucket"
            self.latch_revision = stored_before  # risk's repair goes on top of what it knew, as after a forgery
        if problem:
            self.health.inc("forged_state")
            # At a start: latched and capped (an operator clears it, never a cooldown), and only by a reset requested
            # after the bad entry was stored (read_latch).
            fallback = self.last_latch or doc
            error(self.logger, "FORGED_STATE", "kill-switch latch does not verify; keeping the last verified one",
                  error=problem, halted=fallback.halted)
            doc = fallback
            if self.last_latch is not None:  # repair the store with what risk itself wrote last
                await self.store_latch(doc)
        reset, reset_problem = await read_request(self.kv, RESET_KEY, self.params_keys["operator"])
        new = self.said.first("reset", reset_problem)
        if reset_problem:  # ignored: the latch stays as it is
            if new:
                self.health.inc("forged_state")
                error(self.logger, "FORGED_STATE", "operator reset request does not verify; ignoring it",
                      error=reset_problem)
        elif reset is not None and reset.requested_at_ms > doc.reset_at_ms:
            was = doc.halted
            doc = applied(doc, reset)
            await self.store_latch(doc)
            warn(self.logger, "KILL_SWITCH", "operator reset applied; drawdown is measured from the equity at the "
                 "reset on", was_latched=was, reset_by=reset.requested_by, reason=reset.reason,
                 reset_at_ms=reset.requested_at_ms)
        elif problem and reset is not None and doc.reset_by == UNVERIFIABLE_BY:
            warn(self.logger, "KILL_SWITCH", "the last operator reset was requested before the unverifiable latch "
                 "was stored and does not clear it: run `aura risk reset` again if trading should resume",
                 reset_at_ms=reset.requested_at_ms, unverifiable_since_ms=doc.reset_at_ms)
        self._in_force(doc)
        return latch_view(doc)

    async def store_latch(self, doc: LatchDoc) -> None:
        """Store ``doc`` (signed) as the latch in force, on top of the revision read or written last (or on top of a
        write by somebody else since: risk is the latch's only writer, what it decided stands)."""
        self.latch_revision, overwritten = await write_latch(self.js, doc, self.key, self.latch_revision)
        self._in_force(doc)
        if overwritten:
            self.health.inc("forged_state")
            error(self.logger, "FORGED_STATE", "somebody else wrote the kill-switch latch since risk read it; "
                  "risk's own latch is stored on top", overwritten_revision=overwritten, halted=doc.halted)

    def _in_force(self, doc: LatchDoc) -> None:
        """Make ``doc`` the latch in force.  Every change passes here (read at boot, a cycle or a tick, an operator
        reset applied, a latch, a re-arm, a repair), so the ``halted`` gauge can never lag the latch risk decides on."""
        self.last_latch = doc
        self.health.set("halted", int(doc.halted))

    # -- data -----------------------------------------------------------------------------------------------
    async def newest_ready(self) -> DataReady | None:
        """Ingest's newest valid announcement (a malformed message on the subject is stepped over, not used)."""
        return await newest_valid(self.js, DataReady)

    async def panel(self, content_digest: str) -> Panel:
        """The candle panel named ``content_digest``, fetched and digest-checked (cached: one per cycle)."""
        if self._panel is not None and self._panel[0] == content_digest:
            return self._panel[1]
        try:
            data = await verified_candles(self.js, content_digest)
        except NotFoundError as exc:
            raise Reject("missing_candles", f"object {content_digest[:16]} not in candle store") from exc
        except ObjectTooLarge as exc:
            raise Reject("oversized_candles", str(exc)) from exc
        if data is None:
            raise Reject("digest_mismatch", f"candle object does not hash to {content_digest[:16]}")
        panel = decode_panel(data)
        self._panel = (content_digest, panel)
        return panel

    async def bar_volumes(self, logger: logging.Logger) -> tuple[int | None, dict[str, float]]:
        """(open time, volumes) of the newest verified snapshot's last bar, which cap a tick's exits; none
        readable: (None, {}) (every leg then says in the plan's reasons that it was not capped)."""
        try:
            ready = await self.newest_ready()
            if ready is None:
                return None, {}
            panel = await self.panel(ready.digest)
            return int(panel.timestamps[-1]), decision_bar_volumes(panel)
        except Exception as exc:
            warn(logger, "RISK_TICK", "no bar volumes for the participation cap", error=str(exc)[:200])
            return None, {}

    async def params_at(self, version: int) -> tuple[StrategyParams, int]:
        # With the timeframe, version 0 is the defaults scaled as signal's tracker scales them (same digest).
        # A target naming a version the tracker refused (beyond the operator's envelope too) is refused here.
        params, version, _ = await read_version(self.js, self.params_keys, version, timeframe=self.timeframe,
                                                max_loss_bound=self.max_loss_bound)
        return params, version


__all__ = ["ParamsError", "RiskInputs"]
