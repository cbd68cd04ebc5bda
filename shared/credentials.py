"""Key material under ``$AURA_HOME/keys``: who holds which secret, who trusts which public key.

Layout (``aura keygen``, ``aura up`` and the compose ``keygen`` job create what is missing, never replace)::

    keys/public/<signer>.pub        Ed25519 public keys of the four signers (risk, executor, optimizer, operator)
    keys/public/bus-users.json      the public NKey of every bus principal (what the server config is built from)
    keys/<principal>/bus.nk         that principal's NATS NKey seed: its only way onto the bus (mode 0600)
    keys/<principal>/signing.key    that signer's Ed25519 private key (mode 0600)
    keys/<principal>/pins/*.sha256  public keys it trusted on first use (see :func:`trusted_key`)

Each ``keys/<principal>`` directory is mode 0700; in compose it is a volume mounted into that one service, so
a service holds its own secrets and nothing else.  Under ``aura up`` all processes run as one user: the
modes keep other users out, not the other services (README, "What aura up can isolate").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.signing import generate_keypair, load_private_key, load_public_key

# The five services of the trading pipeline: each publishes its own messages, events and dead letters.
PIPELINE = ("ingest", "signal", "risk", "executor", "optimizer")
# Every identity on the bus: the pipeline, the read-only web console, and the operator (the `aura` CLI).  The
# console has its own credential rather than the operator's so that a compromised console (a web-facing
# process) can read but never write: it holds no publish, KV-write or management right (shared/bus_access.py).
# The optimizer's workers (issue 10) have their own credential too: they run many at a time, on any machine, so
# they may only take evaluation tasks, answer them and read the inputs; never touch the live parameters.
# The admin credential provisions the bus (streams, buckets, durable consumers) and nothing else: used by `aura
# up` and `aura bus provision` (compose's one-shot), never by a running service or the operator's everyday CLI.
PRINCIPALS = (*PIPELINE, "worker", "console", "operator", "admin")
# What each signer signs: risk plans and the kill-switch latch; executor portfolio snapshots; optimizer and
# operator parameter documents (operator also kill-switch resets).
SIGNERS = ("risk", "executor", "optimizer", "operator")
PARAMS_SIGNERS = ("optimizer", "operator")


class CredentialError(ValueError):
    """Key material is missing, malformed, or not the key that was trusted before."""


@dataclass(frozen=True)
class KeyLayout:
    root: Path

    def private_dir(self, principal: str) -> Path:
        return self.root / principal

    def bus_seed(self, principal: str) -> Path:
        return self.private_dir(principal) / "bus.nk"

    def signing_key(self, signer: str) -> Path:
        return self.private_dir(signer) / "signing.key"

    def public_key(self, signer: str) -> Path:
        return self.root / "public" / f"{signer}.pub"

    @property
    def bus_users(self) -> Path:
        return self.root / "public" / "bus-users.json"

    def pin(self, holder: str, signer: str) -> Path:
        return self.private_dir(holder) / "pins" / f"{signer}.pub.sha256"


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never replaces, never readable by others first)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ensure_credentials(layout: KeyLayout, principals: tuple[str, ...] = PRINCIPALS) -> list[str]:
    """Create every missing NKey seed and signing key pair; return what was created (never replaces)."""
    created: list[str] = []
    (layout.root / "public").mkdir(parents=True, exist_ok=True)
    for principal in principals:
        _private_dir(layout.private_dir(principal))
        seed_path = layout.bus_seed(principal)
        if not seed_path.exists():
            _write_new(seed_path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER) + b"\n", 0o600)
            created.append(str(seed_path))
        if principal in SIGNERS and generate_keypair(layout.signing_key(principal), layout.public_key(principal)):
            created.append(str(layout.signing_key(principal)))
    users = {p: bus_public_key(layout, p) for p in PRINCIPALS if layout.bus_seed(p).exists()}
    text = json.dumps(users, indent=2, sort_keys=True) + "\n"
    if not layout.bus_users.exists() or layout.bus_users.read_text() != text:
        layout.bus_users.write_text(text)
    return created


def hand_over(layout: KeyLayout, principal: str, uid: int, gid: int) -> None:
    """Give ``principal``'s private directory to the OS user that runs it (compose: one user per service), so
    its secrets are readable by that user alone; public keys stay readable by all."""
    for path in [layout.private_dir(principal), *layout.private_dir(principal).rglob("*")]:
        os.chown(path, uid, gid)
    for path in (layout.root / "public").iterdir():
        path.chmod(0o644)


def bus_seed(layout: KeyLayout, principal: str) -> str:
    path = layout.bus_seed(principal)
    try:
        seed = path.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"bus credential for {principal} missing at {path} ({type(exc).__name__}); "
                        "run `aura keygen`") from exc
    try:
        nkeys.from_seed(seed.encode())
    except Exception as exc:
        raise CredentialError(f"bus credential at {path} is not an NKey seed") from exc
    return seed


def bus_public_key(layout: KeyLayout, principal: str) -> str:
    return str(nkeys.from_seed(bus_seed(layout, principal).encode()).public_key.decode())


def bus_users(layout: KeyLayout) -> dict[str, str]:
    """principal -> public NKey, as ``ensure_credentials`` recorded them (what the server config admits)."""
    try:
        users = json.loads(layout.bus_users.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialError(f"bus user list missing or unreadable at {layout.bus_users}; run `aura keygen`") from exc
    missing = [p for p in PRINCIPALS if p not in users]
    if missing:
        raise CredentialError(f"bus user list {layout.bus_users} lacks {missing}; run `aura keygen`")
    return {p: str(users[p]) for p in PRINCIPALS}


def signing_key(layout: KeyLayout, signer: str):  # type: ignore[no-untyped-def]
    path = layout.signing_key(signer)
    if not path.is_file():
        raise CredentialError(f"{signer} signing key missing at {path}; run `aura keygen`")
    return load_private_key(path)


def _fingerprint(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def trusted_key(layout: KeyLayout, holder: str, signer: str) -> Ed25519PublicKey:
    """``signer``'s public key as ``holder`` trusts it: pinned on first use, refused if it changes later.

    The public directory is shared and (under ``aura up``) writable by every process, so a key read from it
    is only trusted if it is the one ``holder`` saw first; the pin lives in ``holder``'s private directory.
    """
    path = layout.public_key(signer)
    if not path.is_file():
        raise CredentialError(f"{signer} public key missing at {path}; run `aura keygen`")
    key = load_public_key(path)
    pin = layout.pin(holder, signer)
    fingerprint = _fingerprint(key)
    if pin.exists():
        pinned = pin.read_text().strip()
        if pinned != fingerprint:
            raise CredentialError(f"{signer} public key at {path} changed since {holder} first trusted it (pinned "
                                  f"sha256 {pinned[:16]}…, now {fingerprint[:16]}…); refusing it. If you rotated the "
                                  f"key on purpose, delete {pin} and restart {holder}")
        return key
    pin.parent.mkdir(parents=True, exist_ok=True)
    _write_new(pin, fingerprint.encode() + b"\n", 0o600)
    return key


def trusted_keys(layout: KeyLayout, holder: str, signers: tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    return {signer: trusted_key(layout, holder, signer) for signer in signers}
