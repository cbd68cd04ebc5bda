"""The parameter version in force for a service that reads the newest one (signal, the risk tick, the optimizer
service): the newest *valid* version of ``aura_params`` (``shared.live_params``), followed between cycles (hot
reload without a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js import JetStreamContext

from aura.strategy.params import PARAMS_TIMEFRAME, StrategyParams, params_digest
from shared.live_params import (
    ParamsError,
    check_timeframe,
    default_params,
    known_timeframe,
    stored_document,
    stored_entry,
)
from shared.logging import error, info

if TYPE_CHECKING:  # the health app (fastapi, uvicorn) is a service's
    from shared.health import HealthState


class ParamsTracker:
    """The newest *valid* parameter version, for a service that reads the newest (signal, the risk tick, the
    optimizer service).

    A refused newer version leaves the last valid one in force; readiness stays green (the service keeps
    doing its job) but names the refusal, and ``params_refused`` counts it.  At a start with a bad newest
    version, older versions are tried newest first, then the shipped defaults (scaled to ``timeframe``).  When
    none of the versions the bucket still holds verifies (a flood of junk writes pushes the operator's versions
    out of its 64-entry history), the defaults are in force although the operator chose others: readiness is
    red, naming it, until a valid version is written.
    A document made for other bars than ``timeframe`` (the service's ``settings.timeframe``) is refused the
    same way, logged ``[TIMEFRAME]``, and so is one outside the operator's loss envelope (``max_loss_bound``).
    """

    def __init__(self, js: JetStreamContext, trusted: dict[str, Ed25519PublicKey], health: HealthState,
                 logger: logging.Logger, *, max_loss_bound: float, timeframe: str = PARAMS_TIMEFRAME) -> None:
        self.js, self.trusted, self.health, self.logger = js, trusted, health, logger
        self.max_loss_bound = max_loss_bound  # the operator's envelope (settings.max_loss_bound)
        self.timeframe = known_timeframe(timeframe, "ParamsTracker")
        self.params, self.version = default_params(timeframe), 0
        self.loaded = False
        self.refused: dict[int, str] = {}
        self.unverified_history = 0  # the newest revision, when none the bucket holds verified at start
        health.checks["params"] = self.check

    def check(self) -> tuple[bool, str]:
        if self.unverified_history and not self.version:
            return False, (f"none of the stored parameter versions up to revision {self.unverified_history} "
                           f"verifies: the shipped defaults are in force instead of the operator's; write a signed "
                           f"version (aura params set / rollback) and find who writes the bucket")
        text = f"version {self.version} digest {params_digest(self.params)}"
        newest_refused = max(self.refused, default=0)
        if newest_refused > self.version:
            text += f"; refused version {newest_refused}: {self.refused[newest_refused][:200]}"
        return True, text

    def _refuse(self, version: int, why: str, tag: str = "PARAMS_REFUSED") -> None:
        if version in self.refused:
            return
        self.refused[version] = why
        self.health.inc("params_refused")
        self.health.set("params_refused_version", version)
        fields = {"version": version, "error": why[:400], "in_force": self.version}
        if tag == "TIMEFRAME":  # a document made for other bars (its own tag, so the operator sees why)
            error(self.logger, "TIMEFRAME", "parameter document refused; keeping the last valid version", **fields)
        else:
            error(self.logger, "PARAMS_REFUSED", "parameter document refused; keeping the last valid version",
                  **fields)

    async def follow(self, stop: asyncio.Event, period_s: float = 2.0) -> None:
        """Re-read the newest version every ``period_s`` until ``stop``, so a refused document shows in readiness
        and metrics when it is written, not only at the next cycle."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period_s)
                return
            try:
                await self.current()
            except Exception as exc:  # the bus is down: the next cycle or poll will tell
                self.health.inc("params_read_errors")
                error(self.logger, "PARAMS", "could not read the parameter bucket", error=f"{type(exc).__name__}: "
                      f"{exc}"[:200])

    async def current(self) -> tuple[StrategyParams, int]:
        found = await stored_entry(self.js, None)
        if found is None:
            self.loaded = True
            return self.params, self.version
        newest = found[1]
        if newest == self.version and self.loaded:
            return self.params, self.version
        candidates: list[tuple[bytes, int, int]] = [found]
        # The newest may be refused: fall back through older versions, at start down to the oldest kept, later
        # down to the one in force.  A valid version with a refused one written on top before this poll is still
        # taken up (a running service once kept the older version while a restarted one took the valid one:
        # risk then refused every target of signal as made with superseded parameters).
        floor = max(0, newest - 64) if not self.loaded else max(self.version, newest - 64)
        for revision in range(newest - 1, floor, -1):
            if revision in self.refused:
                continue  # read and refused before: not read again on every poll
            older = await stored_entry(self.js, revision)
            if older is not None:
                candidates.append(older)
        unverified = False
        for data, version, stored_ms in candidates:
            if version in self.refused:
                continue
            try:
                doc, signer = stored_document(data, version, stored_ms, self.trusted, self.max_loss_bound)
            except ParamsError as exc:
                self._refuse(version, str(exc))
                unverified = True
                continue
            except Exception as exc:  # whatever a stored document makes fail, it is refused
                # Never raised to the caller: risk's tick reads parameters before every stop-loss check.
                self._refuse(version, f"unreadable document ({type(exc).__name__}: {exc})"[:300])
                unverified = True
                continue
            try:
                check_timeframe(doc, self.timeframe, version)
            except ParamsError as exc:
                self._refuse(version, str(exc), tag="TIMEFRAME")
                continue
            if version != self.version:
                info(self.logger, "PARAMS", "parameter version in force", version=version, signer=signer,
                     promoted_by=doc.promoted_by, digest=params_digest(doc.params))
            self.params, self.version = doc.params, version
            break
        if not self.loaded and unverified and not self.version:
            self.unverified_history = newest
            error(self.logger, "PARAMS_REFUSED", "no stored parameter version verifies: the shipped defaults are "
                  "in force; readiness is red until a valid version is written", newest_revision=newest)
        self.loaded = True
        self.health.set("params_version", self.version)
        return self.params, self.version
