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

from aura.strategy.params import StrategyParams
from shared.bus import state_kv
from shared.live_params import ParamsError, history, promote, read_version, sign_document

DECISION_KEY = "optimizer.decision"


class PromotionRefused(RuntimeError):
    """The gate said yes, but the system is no longer where the run started from."""


async def live_incumbent(js: JetStreamContext, trusted: dict[str, Ed25519PublicKey]) -> tuple[StrategyParams, int]:
    """(parameters, version) in force: the newest version that verifies, as signal and risk choose it at a start
    (version 0: nothing promoted yet, the shipped defaults)."""
    try:
        params, version, _ = await read_version(js, trusted)
        return params, version
    except ParamsError:
        for version, doc, _why in reversed(await history(js, trusted)):
            if doc is not None:
                return doc.params, version
        return StrategyParams(), 0


async def promote_winner(js: JetStreamContext, key: Ed25519PrivateKey, trusted: dict[str, Ed25519PublicKey],
                         winner: StrategyParams, record: dict[str, Any], reason: str, incumbent_version: int,
                         ) -> int:
    """Write the signed winner; returns its version.  Refused if the version in force is not the incumbent the
    run was judged against (someone promoted or rolled back meanwhile)."""
    _, now = await live_incumbent(js, trusted)
    if now != incumbent_version:
        raise PromotionRefused(f"the live parameter version is {now}, the run was judged against version "
                               f"{incumbent_version}: not promoting; run the optimizer again")
    return await promote(js, sign_document(winner, key, promoted_by="optimizer", reason=reason, record=record))


async def publish_decision(js: JetStreamContext, summary: dict[str, Any]) -> None:
    kv = await state_kv(js)
    await kv.put(DECISION_KEY, json.dumps(summary, sort_keys=True, allow_nan=False).encode())
