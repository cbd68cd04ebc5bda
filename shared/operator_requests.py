"""Signed requests from the operator to a service that alone may act on them.

Some state has one writer: the kill-switch latch is risk's, the journal is the executor's.  An operator who
wants it changed (``aura risk reset``, ``aura journal adopt``) writes a request, signed with the operator's key,
to a key of ``aura_state`` only the operator may write (``operator.<what>``); the owning service verifies it
against the operator key it pinned, applies a request newer than the last one it applied, and records it.
A request written again changes nothing: it is not newer.  Each request is signed for the key it is written to
(``action``): the operator's bus credential may write every ``operator.*`` key, and a signed adoption copied to
``operator.reset`` must not clear the kill-switch (nor a reset make the executor adopt the exchange's balances).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js.kv import KeyValue

from shared.bus import kv_get
from shared.signing import SignatureError, sign_struct, verify_struct
from shared.state_keys import ADOPT_KEY, RESET_KEY, SETTLE_KEY
from shared.wire import decode_document

# The keys are named in shared/state_keys.py; importers of the requests find them here too.
__all__ = ["ADOPT_KEY", "RESET_KEY", "SETTLE_KEY", "OperatorRequest", "SettleRequest", "operator_request",
           "read_request", "write_request"]



class OperatorRequest(msgspec.Struct, frozen=True, kw_only=True):
    requested_at_ms: int
    requested_by: str
    reason: str
    action: str = ""  # the aura_state key it was signed for (``operator.reset``...); covered by the signature
    signature: str = ""
    key_id: str = ""


class SettleRequest(OperatorRequest, frozen=True, kw_only=True):
    """Close one order the executor cannot settle (it names it by clientOrderId) as canceled with no fills: what
    the operator decides after checking it on the exchange.  The signature covers the id."""

    client_order_id: str


def operator_request(action: str, by: str, reason: str, key: Ed25519PrivateKey,
                     now_ms: int | None = None) -> OperatorRequest:
    """A request for ``action`` (the key it goes to: RESET_KEY, ADOPT_KEY), signed with the operator's ``key``."""
    at = int(time.time() * 1000) if now_ms is None else now_ms
    return sign_struct(OperatorRequest(requested_at_ms=at, requested_by=by, reason=reason, action=action), key)


async def read_request(kv: KeyValue, key: str, operator_key: Ed25519PublicKey,
                       kind: type[OperatorRequest] = OperatorRequest) -> tuple[Any, str]:
    """(the newest verified request under ``key``, as ``kind``, problem).  Unset: (None, "").  One signed for
    another key (a copy of another request) is refused.  A problem names the entry's revision, so a reader that
    says a refusal once says the next bad write again."""
    raw, revision = await kv_get(kv, key)
    if raw is None:
        return None, ""
    try:
        request = decode_document(raw, kind)
        verify_struct(request, {"operator": operator_key})
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"revision {revision}: malformed request: {exc}"
    except SignatureError as exc:
        return None, f"revision {revision}: {exc}"
    if request.action != key:
        return None, (f"revision {revision}: a request signed for {request.action or 'no key'!r} was stored under "
                      f"{key!r}: refused (a copy of another operator request)")
    return request, ""


async def write_request(kv: KeyValue, key: str, request: OperatorRequest) -> int:
    return int(await kv.put(key, msgspec.json.encode(request)))
