"""The kill-switch latch and the operator's reset, both signed, in the state bucket ``aura_state``.

* ``risk.halted``: written only by risk (bus permissions) and signed with risk's key; verified when read.  Each
  latch names the revision it replaces and is written only on top of it (``shared.kv_chain``), so a holder of
  risk's bus credential without its signing key can neither put back an older latch (unlatched, say) nor delete
  it unseen.  A latch that does not verify, or was deleted or replayed, counts as latched (fail closed) and is
  logged ``[FORGED_STATE]``.
* ``operator.reset``: a signed operator request (``shared.operator_requests``, ``aura risk reset``).  Risk
  applies a reset newer than the last one it applied at its start or its next cycle or tick: it writes a new, signed,
  unlatched ``risk.halted`` whose ``reset_at_ms`` re-arms the kill-switch from the equity at the reset
  (``services.risk.tick.equity_since_reset``).  An old reset written again changes nothing.

The latch also carries the kill-switch's re-arm policy (``aura.strategy.risk_gates``): the data-bar time it
latched at (a target's or tick's ``as_of_ms``, never a clock), the time it re-arms by itself under the parameters
in force (``rearm_at_ms``; 0: only an operator reset, because the cooldown is 0 or the cap was reached), and, once
re-armed, the executor commit time from which the rolling drawdown counts equity again (``equity_since_ms``).
``after_decision`` and ``rearmed`` are the pure transitions; risk writes the result when it changed.
"""

from __future__ import annotations

import time

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext

from aura.strategy.pipeline import RiskOutcome
from aura.strategy.risk_gates import kill_switch_after
from shared.contracts import STATE_BUCKET
from shared.kv_chain import UNCHAINED, read_chained, write_chained
from shared.operator_requests import OperatorRequest
from shared.signing import SignatureError, sign_struct, verify_layouts
from shared.state_keys import HALT_KEY
from shared.wire import decode_document


class _LatchDocV1(msgspec.Struct, frozen=True, kw_only=True):
    """The latch as risk signed it before the re-arm policy: still verifiable after an upgrade."""

    halted: bool
    cycle_id: str = ""  # the cycle whose drawdown latched it
    drawdown: float = 0.0
    reset_at_ms: int = 0  # the operator reset this latch state came from (0: never reset)
    reset_by: str = ""
    reason: str = ""
    updated_at_ms: int = 0
    signature: str = ""
    key_id: str = ""


class _LatchDocV2(_LatchDocV1, frozen=True, kw_only=True):
    """The latch as risk signed it before it named the revision it replaces."""

    # --- the re-arm policy (times are data-bar open times, as_of_ms, except equity_since_ms) -----------------
    latched_at_ms: int = 0  # the bar of the decision that latched it (0: unknown, stamped at the next one)
    rearm_at_ms: int = 0  # the bar from which it re-arms by itself (0: only `aura risk reset` clears it)
    capped: bool = False  # the drawdown since the last reset reached kill_switch_cap: only an operator clears it
    rearmed_at_ms: int = 0  # the bar of the last automatic re-arm (0: never)
    equity_since_ms: int = 0  # the rolling drawdown counts equity committed after this (executor commit time)
    peak_equity: float = 0.0  # highest committed equity since the last operator reset, as of the last write


class LatchDoc(_LatchDocV2, frozen=True, kw_only=True):
    prev_revision: int = UNCHAINED  # the revision of risk.halted this one replaced (shared.kv_chain)


_OLDER_LAYOUTS: tuple[type[msgspec.Struct], ...] = (_LatchDocV2, _LatchDocV1)
# reset_by of the latch that stands in for an unverifiable one (read_latch): its reset_at_ms is when the bad entry
# was stored, not a reset anybody made.  Risk stores it signed like any latch until an operator resets it.
UNVERIFIABLE_BY = "risk:unverifiable-latch"


def _decode(raw: bytes, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return decode_document(raw, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SignatureError(f"malformed {kind.__name__}: {exc}") from exc


async def read_latch(js: JetStreamContext, risk_key: Ed25519PublicKey) -> tuple[LatchDoc, int, str]:
    """(latch, revision of the key's last entry, problem).  Never written: not halted.

    Unverifiable, deleted or not risk's newest: latched and capped (fail closed), with the problem named, as of
    the time the server stored the bad entry (``reset_at_ms``): only an operator reset requested after that
    clears it.  The last reset stays in ``operator.reset`` for ever, so a risk starting on a tampered latch would
    otherwise apply that old reset again and unlatch."""
    doc, head, problem = await read_chained(js, STATE_BUCKET, HALT_KEY, lambda raw: verified_latch(raw, risk_key))
    if doc is not None:
        return doc, head.revision, ""
    if not problem:
        return LatchDoc(halted=False), 0, ""
    return (LatchDoc(halted=True, capped=True, reset_at_ms=head.stored_ms, reset_by=UNVERIFIABLE_BY,
                     reason=f"unverifiable latch: {problem}"), head.revision, problem)


def verified_latch(raw: bytes, risk_key: Ed25519PublicKey) -> LatchDoc:
    """The stored latch, decoded and verified against risk's key (a latch of an older layout as it was signed);
    SignatureError if it is malformed or forged.  (Whether it is risk's newest is read_latch's question.)"""
    doc = _decode(raw, LatchDoc)
    assert isinstance(doc, LatchDoc)
    verify_layouts(doc, raw, _OLDER_LAYOUTS, {"risk": risk_key})
    return doc


async def write_latch(js: JetStreamContext, doc: LatchDoc, key: Ed25519PrivateKey,
                      prev_revision: int) -> tuple[int, int]:
    """Store ``doc``, signed, on top of the revision ``prev_revision`` read or written last (0: none): (its revision,
    the revision of a write by somebody else it went on top of instead, or 0; kv_chain.write_chained)."""
    def signed(prev: int) -> bytes:
        stamped = msgspec.structs.replace(doc, updated_at_ms=int(time.time() * 1000), prev_revision=prev)
        return msgspec.json.encode(sign_struct(stamped, key))

    return await write_chained(js, STATE_BUCKET, HALT_KEY, signed, prev_revision)


def applied(latch: LatchDoc, reset: OperatorRequest) -> LatchDoc:
    """The latch after applying ``reset`` (pure): clear, cap cleared, drawdown and peak measured from the reset."""
    return LatchDoc(halted=False, reset_at_ms=reset.requested_at_ms, reset_by=reset.requested_by,
                    reason=reset.reason, cycle_id=latch.cycle_id, drawdown=latch.drawdown,
                    equity_since_ms=reset.requested_at_ms, rearmed_at_ms=latch.rearmed_at_ms)


def rearmed(latch: LatchDoc, as_of_ms: int, basis_committed_ms: int, committed_peak: float) -> LatchDoc:
    """The latch re-armed by itself at the bar ``as_of_ms`` (pure; risk_gates.rearm_due said it is due).

    The rolling drawdown then counts only equity committed after the basis the re-arming decision stands on, as
    after an operator reset: the peak that latched it may still be inside the window."""
    return msgspec.structs.replace(latch, halted=False, rearm_at_ms=0, rearmed_at_ms=as_of_ms,
                                   equity_since_ms=max(latch.equity_since_ms, basis_committed_ms),
                                   peak_equity=max(latch.peak_equity, committed_peak))


def after_decision(latch: LatchDoc, outcome: RiskOutcome, cycle_id: str, as_of_ms: int, cooldown: int,
                   bar_ms: int, committed_peak: float) -> LatchDoc:
    """The latch after a cycle's or tick's decision (pure): latched or not, capped or not, when it re-arms.

    ``as_of_ms``: the data bar the decision was made on (0 if unknown: a latch stamped 0 is stamped at the next
    decision with data, so its cooldown never starts from a guess).  ``committed_peak``: the highest equity the
    executor committed since the last operator reset (from the basis snapshot)."""
    halted, capped, latched_ms = kill_switch_after(latch.halted, outcome.halted, latch.capped, outcome.capped,
                                                   latch.latched_at_ms, as_of_ms)
    newly = halted and not latch.halted
    if halted and latched_ms == 0:
        latched_ms = as_of_ms
    rearm_at = latched_ms + cooldown * bar_ms if halted and not capped and cooldown > 0 and latched_ms > 0 else 0
    return msgspec.structs.replace(
        latch, halted=halted, capped=capped, latched_at_ms=latched_ms, rearm_at_ms=rearm_at,
        cycle_id=cycle_id if newly else latch.cycle_id, drawdown=outcome.drawdown if newly else latch.drawdown,
        peak_equity=max(latch.peak_equity, committed_peak))
