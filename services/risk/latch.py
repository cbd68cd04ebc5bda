"""The kill-switch latch and the operator's reset, both signed, in the state bucket ``aura_state``.

* ``risk.halted``: written only by risk (bus permissions) and signed with risk's key; verified when read.  A
  latch that does not verify counts as latched (fail closed) and is logged ``[FORGED_STATE]``.
* ``operator.reset``: a signed operator request (``shared.operator_requests``, ``aura risk reset``).  Risk
  applies a reset newer than the last one it applied at its next cycle or tick: it writes a new, signed,
  unlatched ``risk.halted`` whose ``reset_at_ms`` re-arms the kill-switch from the equity at the reset
  (``services.risk.tick.equity_since_reset``).  An old reset written again changes nothing.
"""

from __future__ import annotations

import time

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js.kv import KeyValue

from shared.bus import kv_get
from shared.operator_requests import OperatorRequest
from shared.signing import SignatureError, sign_struct, verify_struct

HALT_KEY = "risk.halted"


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
        doc = _decode(raw, LatchDoc)
        verify_struct(doc, {"risk": risk_key})
    except SignatureError as exc:
        return LatchDoc(halted=True, reason=f"unverifiable latch: {exc}"), revision, str(exc)
    assert isinstance(doc, LatchDoc)
    return doc, revision, ""


async def write_latch(kv: KeyValue, doc: LatchDoc, key: Ed25519PrivateKey) -> int:
    doc = msgspec.structs.replace(doc, updated_at_ms=int(time.time() * 1000))
    return int(await kv.put(HALT_KEY, msgspec.json.encode(sign_struct(doc, key))))


def applied(latch: LatchDoc, reset: OperatorRequest) -> LatchDoc:
    """The latch after applying ``reset`` (pure)."""
    return LatchDoc(halted=False, reset_at_ms=reset.requested_at_ms, reset_by=reset.requested_by,
                    reason=reset.reason, cycle_id=latch.cycle_id, drawdown=latch.drawdown)
