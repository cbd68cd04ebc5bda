"""The bus's wire format: canonical bytes and content ids, and JSON encoding and decoding with the schema-version
check.

Separate from shared/contracts.py, which holds the messages themselves and where they travel (streams,
consumers, subjects): this part knows no message and no subject, only how any struct becomes bytes and back.
shared/contracts.py re-exports every name here, so importers keep the one place to import contracts from.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import msgspec

SCHEMA_VERSION = 1


class ContractError(ValueError):
    """A message could not be decoded, has the wrong version, or fails validation."""


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic JSON (dict keys sorted) used for ids, digests and signatures."""
    return msgspec.json.encode(obj, order="deterministic")


def content_id(obj: Any, prefix: str = "", length: int = 24) -> str:
    return prefix + hashlib.sha256(canonical_bytes(obj)).hexdigest()[:length]


def encode(msg: msgspec.Struct) -> bytes:
    return msgspec.json.encode(msg)


T = TypeVar("T", bound=msgspec.Struct)


def decode_document(raw: bytes, kind: Any = Any) -> Any:
    """A stored document (a KV entry, not a bus contract: no schema version) as ``kind``; anything malformed,
    deep nesting included, is a ``msgspec.DecodeError``/``ValidationError``.  A few KB of nested brackets make
    msgspec raise RecursionError, which callers that catch only msgspec's errors let through: one such entry
    written by any principal with write rights stopped every reader (risk's stop-loss checks among them)."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except RecursionError as exc:
        raise msgspec.DecodeError("malformed JSON: nested too deeply") from exc


def decode(data: bytes, kind: type[T]) -> T:
    """Decode and check the schema version; raise ContractError with a readable reason."""
    try:
        probe = msgspec.json.decode(data, type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise ContractError(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # a few KB of nested brackets: refuse it like any other bad payload
        raise ContractError("malformed JSON: nested too deeply") from exc
    version = probe.get("v")
    if version != SCHEMA_VERSION:
        raise ContractError(f"{kind.__name__}: unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise ContractError(f"{kind.__name__}: {exc}") from exc
    except RecursionError as exc:
        raise ContractError(f"{kind.__name__}: nested too deeply") from exc
