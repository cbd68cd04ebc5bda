"""Promotion of an optimizer run's winner into a running system, through the existing parameter path.

The incumbent is the system's newest valid parameter version, read before the search starts (the gate compares the
winner with it).  When the gate says yes, the winner goes into ``aura_params`` as a document signed with the
optimizer's key (shared/live_params.py ``sign_document`` / ``promote``), its ``record`` the gate's record; signal
and risk verify and hot-reload it between cycles, ``aura params history`` lists it and ``aura params rollback``
undoes it like any other version.  When the gate says no, nothing is written to ``aura_params``.  Either way the
decision's summary goes to ``aura_state`` key ``optimizer.decision``, where the console shows it.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext

from aura.strategy.params import PARAMS_TIMEFRAME, StrategyParams
from shared.bus import state_kv
from shared.live_params import (
    ParamsError,
    check_history_fits,
    check_loss_bound,
    default_params,
    document_timeframe,
    history,
    last_revision,
    last_valid,
    promote,
    read_version,
    same_timeframe,
    sign_document,
)
from shared.state_keys import DECISION_KEY


class PromotionRefused(RuntimeError):
    """The gate said yes, but the system is no longer where the run started from."""


async def live_incumbent(js: JetStreamContext, trusted: dict[str, Ed25519PublicKey],
                         timeframe: str = PARAMS_TIMEFRAME, max_loss_bound: float | None = None,
                         ) -> tuple[StrategyParams, int]:
    """(parameters, version) in force for a run on ``timeframe`` bars: the newest version that verifies, as signal
    and risk choose it at a start (version 0: nothing promoted yet, the shipped defaults at the same durations in
    ``timeframe`` bars).

    PromotionRefused when the version in force counts other bars: a winner for ``timeframe`` would only be
    refused by signal and risk ([TIMEFRAME]) once written, and comparing it with parameters counted in other bars
    would judge it against a strategy the system does not run."""
    try:
        # One signal and risk refuse (beyond the operator's envelope too) is not in force.
        _, version, doc = await read_version(js, trusted, max_loss_bound=max_loss_bound)
    except ParamsError:
        version, doc = last_valid(await history(js, trusted, max_loss_bound))
    if doc is None:
        return default_params(timeframe), version
    # The newest valid version says which bars the system trades; if it is itself refused there (a version for
    # other bars set by hand), the operator sorts that out first: guessing could write a winner nobody trades.
    if not same_timeframe(document_timeframe(doc), timeframe):
        raise PromotionRefused(f"the newest parameter version ({version}) counts {document_timeframe(doc)} bars, "
                               f"this run chooses parameters for {timeframe} bars: not promoting. Run the optimizer "
                               f"with --timeframe {document_timeframe(doc)}, or, if the system trades {timeframe} "
                               f"bars (and refuses version {version}), roll back to a {timeframe} version first")
    return doc.params, version


async def promote_winner(js: JetStreamContext, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey],
                         winner: StrategyParams, record: dict[str, Any], reason: str, incumbent_version: int,
                         timeframe: str = PARAMS_TIMEFRAME, *, max_loss_bound: float, snapshot_bars: int) -> int:
    """Write the signed winner; returns its version.  Refused if the version in force is not the incumbent the
    run was judged against (someone promoted or rolled back meanwhile), or counts other bars than the run's.

    ``timeframe`` is the run's: the record says which bars the winner's lookbacks count, so a system on other
    bars refuses it ([TIMEFRAME]) instead of trading them miscounted, and it is validated with that
    timeframe's ranges.  ``snapshot_bars``: the history each of the system's snapshots holds; a winner that reads
    more would stop signal at its next cycle, so it is refused here."""
    try:  # signal and risk would refuse it: never written
        check_loss_bound(winner, max_loss_bound, "(the winner)")
        check_history_fits(winner, snapshot_bars, "(the winner)")
    except ParamsError as exc:
        raise PromotionRefused(str(exc)) from exc
    # Read before the check: a promotion or rollback landing after it makes the write below fail, not go on top.
    last = await last_revision(js)
    _, now = await live_incumbent(js, trusted, timeframe, max_loss_bound)
    if now != incumbent_version:
        raise PromotionRefused(f"the live parameter version is {now}, the run was judged against version "
                               f"{incumbent_version}: not promoting; run the optimizer again")
    signed = sign_document(winner, key, promoted_by="optimizer", reason=reason,
                           record={**record, "timeframe": timeframe})
    try:
        return await promote(js, signed, key, after=last)
    except ParamsError as exc:
        raise PromotionRefused(f"{exc}; run the optimizer again") from exc


async def publish_decision(js: JetStreamContext, summary: dict[str, Any]) -> None:
    kv = await state_kv(js)
    await kv.put(DECISION_KEY, json.dumps(summary, sort_keys=True, allow_nan=False).encode())
