"""The kill-switch latch and the operator's reset, both signed, in the state bucket ``aura_state``.

* ``risk.halted``: written only by risk (bus permissions) and signed with risk's key; verified when read.  A
  latch that does not verify counts as latched (fail closed) and is logged ``[FORGED_STATE]``.
* ``operator.reset``: a signed operator request (``shared.operator_requests``, ``aura risk reset``).  Risk
  applies a reset newer than the last one it applied at its next cycle or tick: it writes a new, signed,
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
from nats.js.kv import KeyValue

from aura.strategy.pipeline import RiskOutcome
from aura.strategy.risk_gates import kill_switch_after
from shared.bus import kv_get
from shared.operator_requests import OperatorRequest
from shared.signing import SignatureError, sign_struct, verify_struct
from shared.state_keys import HALT_KEY


class LatchDoc(msgspec.Struct, frozen=True, kw_only=True):
    halted: bool
    cycle_id: str = ""  # the cycle whose drawdown latched it
    drawdown: float = 0.0
    reset_at_ms: int = 0  # the operator reset this latch state came from (0: never reset)
    reset_by: str = ""
    reason: str = ""
    updated_at_ms: int = 0
    signature: str = ""
    key_id: str = ""
    # --- the re-arm policy (times are data-bar open times, as_of_ms, except equity_since_ms) -----------------
    latched_at_ms: int = 0  # the bar of the decision that latched it (0: unknown, stamped at the next one)
    rearm_at_ms: int = 0  # the bar from which it re-arms by itself (0: only `aura risk reset` clears it)
    capped: bool = False  # the drawdown since the last reset reached kill_switch_cap: only an operator clears it
    rearmed_at_ms: int = 0  # the bar of the last automatic re-arm (0: never)
    equity_since_ms: int = 0  # the rolling drawdown counts equity committed after this (executor commit time)
    peak_equity: float = 0.0  # highest committed equity since the last operator reset, as of the last write


class _LatchDocV1(msgspec.Struct, frozen=True, kw_only=True):
    """The latch as risk signed it before the re-arm policy: still verifiable after an upgrade."""

    halted: bool
    cycle_id: str = ""
    drawdown: float = 0.0
    reset_at_ms: int = 0
    reset_by: str = ""
    reason: str = ""
    updated_at_ms: int = 0
    signature: str = ""
    key_id: str = ""


def _decode(raw: bytes, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SignatureError(f"malformed {kind.__name__}: {exc}") from exc


async def read_latch(kv: KeyValue, risk_key: Ed25519PublicKey) -> tuple[LatchDoc, int, str]:
    """(latch, revision, problem).  Unset: not halted.  Unverifiable: halted, with the problem named."""
    raw, revision = await kv_get(kv, HALT_KEY)
    if raw is None:
        return LatchDoc(halted=False), 0, ""
    try:
        doc = verified_latch(raw, risk_key)
    except SignatureError as exc:
        return LatchDoc(halted=True, reason=f"unverifiable latch: {exc}"), revision, str(exc)
    return doc, revision, ""


def verified_latch(raw: bytes, risk_key: Ed25519PublicKey) -> LatchDoc:
    """The stored latch, decoded and verified against risk's key; SignatureError if it is malformed or forged."""
    doc = _decode(raw, LatchDoc)
    assert isinstance(doc, LatchDoc)
    try:
        verify_struct(doc, {"risk": risk_key})
        return doc
    except SignatureError as exc:
        error = exc
    # A latch written before the re-arm policy existed was signed over the older fields only: it verifies as such,
    # provided it carries nothing else (a field it was not signed with would be unauthenticated).
    old = _decode(raw, _LatchDocV1)
    assert isinstance(old, _LatchDocV1)
    if LatchDoc(**msgspec.structs.asdict(old)) != doc:
        raise error
    try:
        verify_struct(old, {"risk": risk_key})
    except SignatureError:
        raise error from None
    return doc


async def write_latch(kv: KeyValue, doc: LatchDoc, key: Ed25519PrivateKey) -> int:
    doc = msgspec.structs.replace(doc, updated_at_ms=int(time.time() * 1000))
    return int(await kv.put(HALT_KEY, msgspec.json.encode(sign_struct(doc, key))))


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
