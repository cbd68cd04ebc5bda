"""Ed25519 signing of what crosses the bus and must not be forged.

Only the risk service holds the private key that signs plans; the executor holds the public key and refuses
any plan whose signature does not verify.  That is what makes the risk gate non-bypassable: a process that
can publish on the bus still cannot produce a plan the executor will run.  The same scheme signs the
executor's portfolio snapshots (verified by risk), the kill-switch latch (risk) and parameter documents
(optimizer or operator): :func:`sign_struct` / :func:`verify_struct` over the canonical bytes of a struct
whose ``signature`` and ``key_id`` fields are empty.  Where the key files live: ``shared.credentials``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.contracts import ApprovedPlan, PlanBody, canonical_bytes
from shared.wire import decode_document

S = TypeVar("S", bound=msgspec.Struct)


class SignatureError(ValueError):
    pass


def generate_keypair(private_path: Path, public_path: Path) -> bool:
    """Create the key pair if it does not exist yet; return True if created. The private file is 0600."""
    if private_path.exists():
        if not public_path.exists():
            public_path.parent.mkdir(parents=True, exist_ok=True)
            public_path.write_bytes(public_bytes(load_private_key(private_path).public_key()))
        return False
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    public_path.write_bytes(public_bytes(key.public_key()))
    return True


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_plan(body: PlanBody, key: Ed25519PrivateKey) -> ApprovedPlan:
    signature = key.sign(canonical_bytes(body)).hex()
    return ApprovedPlan(plan=body, signature=signature, key_id=key_id(key.public_key()))


def verify_plan(plan: ApprovedPlan, key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless ``plan`` was signed by the holder of ``key``'s private half."""
    if plan.key_id != key_id(key):
        raise SignatureError(f"plan signed by unknown key {plan.key_id!r}")
    try:
        key.verify(bytes.fromhex(plan.signature), canonical_bytes(plan.plan))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc


def _unsigned_bytes(obj: Any) -> bytes:
    return canonical_bytes(msgspec.structs.replace(obj, signature="", key_id=""))


def sign_struct(obj: S, key: Ed25519PrivateKey) -> S:
    """``obj`` with its ``signature`` and ``key_id`` fields set (a frozen struct with both fields)."""
    return msgspec.structs.replace(obj, signature=key.sign(_unsigned_bytes(obj)).hex(),
                                   key_id=key_id(key.public_key()))


def verify_struct(obj: Any, keys: dict[str, Ed25519PublicKey]) -> str:
    """The name of the key in ``keys`` that signed ``obj``; SignatureError if none did."""
    for name, key in keys.items():
        if obj.key_id == key_id(key):
            try:
                key.verify(bytes.fromhex(obj.signature), _unsigned_bytes(obj))
            except (InvalidSignature, ValueError) as exc:
                raise SignatureError(f"signature by {name}'s key does not verify") from exc
            return name
    if not obj.signature:
        raise SignatureError("unsigned")
    raise SignatureError(f"signed by unknown key {obj.key_id!r}")


def verify_layouts(doc: msgspec.Struct, raw: bytes, older: Sequence[type[msgspec.Struct]],
                   keys: dict[str, Ed25519PublicKey]) -> tuple[str, bool]:
    """(signer, whether it verified as an older layout) of ``doc``, decoded from ``raw`` in its current layout.

    A document signed before its struct gained fields was signed over the fields of its own layout: it verifies
    as that layout, provided it carries nothing that layout lacks (a field its signature does not cover would be
    unauthenticated).  SignatureError (the current layout's) if it verifies as none."""
    try:
        return verify_struct(doc, keys), False
    except SignatureError as exc:
        error = exc
    for layout in older:
        try:
            old = decode_document(raw, layout)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # it carries a field that layout forbids: not signed as it
        if type(doc)(**msgspec.structs.asdict(old)) != doc:
            continue
        try:
            return verify_struct(old, keys), True
        except SignatureError:
            continue
    raise error
