"""Parameter documents are signed with the version they are promoted as (shared/live_params.py): a document written
again under another version is a rollback nobody signed.  Documents of the layout before that verify as they were
signed, where the server stored them when they were signed."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aura.strategy.params import StrategyParams
from shared.kv_chain import LEGACY_SKEW_MS
from shared.live_params import (
    OLDER_LAYOUT,
    ParamsDocument,
    ParamsError,
    _ParamsDocumentV1,
    check_version,
    verify_document,
)
from shared.signing import sign_struct

NOW = 1_765_000_000_000


def test_a_document_is_believed_only_as_the_version_it_was_signed_as() -> None:
    key = Ed25519PrivateKey.generate()
    doc = sign_struct(ParamsDocument(params=StrategyParams(top_k=2), promoted_by="operator:a", reason="r",
                                     promoted_at_ms=NOW, version=7), key)
    verified, signer = verify_document(msgspec.json.encode(doc), {"operator": key.public_key()})
    assert signer == "operator" and verified.version == 7
    check_version(verified, 7, NOW + 10 * LEGACY_SKEW_MS)  # bound: the server's time does not matter
    with pytest.raises(ParamsError, match="signed as version 7 is stored as version 9"):
        check_version(verified, 9, NOW)
    moved = msgspec.json.encode({**msgspec.to_builtins(doc), "version": 9})  # the version is under the signature
    with pytest.raises(ParamsError, match="does not verify"):
        verify_document(moved, {"operator": key.public_key()})


def test_a_document_of_this_layout_never_promoted_is_not_taken_for_an_older_one() -> None:
    """sign_document signs version 0 (promote() signs the version it becomes): stored as it is, however fresh, it
    is refused; only a document that verified as the older layout is judged by when it was stored."""
    key = Ed25519PrivateKey.generate()
    raw = msgspec.json.encode(sign_struct(ParamsDocument(params=StrategyParams(), promoted_by="operator:a",
                                                         reason="r", promoted_at_ms=NOW), key))
    doc, _ = verify_document(raw, {"operator": key.public_key()})
    with pytest.raises(ParamsError, match="signed as version 0 is stored as version 3"):
        check_version(doc, 3, NOW + 1)


def test_a_document_of_the_older_layout_verifies_where_it_was_stored_when_signed() -> None:
    key = Ed25519PrivateKey.generate()
    old = sign_struct(_ParamsDocumentV1(params=StrategyParams(top_k=3), promoted_by="optimizer", reason="r",
                                        promoted_at_ms=NOW), key)
    raw = msgspec.json.encode(old)
    assert b"version" not in raw
    doc, signer = verify_document(raw, {"optimizer": key.public_key()})
    assert signer == "optimizer" and doc.version == OLDER_LAYOUT and doc.params.top_k == 3
    check_version(doc, 4, NOW + 2_000)  # stored two seconds after it was signed
    with pytest.raises(ParamsError, match="replayed"):
        check_version(doc, 5, NOW + 2 * LEGACY_SKEW_MS)  # the same document written again later
    with pytest.raises(ParamsError, match="replayed"):
        check_version(doc, 5, 0)  # no server time: nothing says when it was stored
    added = msgspec.json.encode({**msgspec.to_builtins(old), "version": 5})  # a field its signature does not cover
    with pytest.raises(ParamsError, match="does not verify"):
        verify_document(added, {"optimizer": key.public_key()})
