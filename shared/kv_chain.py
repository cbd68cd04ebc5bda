"""Signed state in a KV bucket that cannot be deleted, rolled back or replayed unseen.

A signature proves who wrote a value, not that it is the newest one.  A client allowed to write the key (the
writer's own bus credential, stolen without its signing key) could delete it, or put back a value the writer
signed earlier (read when it was current: the kill-switch latch unlatched, say, recorded before it latched).  So
each value names the revision it replaces (``prev_revision``, covered by the signature), is written with that as
the key's expected last revision (the server refuses it if anything was stored on the key since), and a reader
checks that the value's entry is the first one on the key after ``prev_revision``.  A replayed value names a
revision that is older than the entry before it; a deleted key ends in a delete marker.

Values signed before their layout carried ``prev_revision`` (-1) cannot name their predecessor.  They are taken
as long as the server stored them when they were signed (within ``LEGACY_SKEW_MS`` of their ``updated_at_ms``):
a value written again later is a replay.  The writer's next write chains it.

The reader needs the stream's by-sequence direct get (``$JS.API.DIRECT.GET.KV_<bucket>`` in the permission
matrix), which reads any key of the bucket by revision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from shared.signing import SignatureError

DELETE_OPERATIONS = ("DEL", "PURGE")
LEGACY_SKEW_MS = 5 * 60_000  # a value of the old layout must have been stored this close to its signing time
UNCHAINED = -1  # prev_revision of a value signed before the layout carried it
WRONG_LAST_SEQUENCE = (10071, 10164)  # the server's codes for "the key's last revision is not the one expected"
CHAINED_ATTEMPTS = 3  # conditional writes before a write that a forger keeps racing is stored unconditionally


@dataclass(frozen=True)
class Head:
    """The last entry of a key: its value (None: never written, or deleted), revision and server time."""

    value: bytes | None
    revision: int  # the last entry, a delete marker included; 0: the key was never written
    operation: str = ""  # "DEL" or "PURGE" when the last entry deletes the key
    stored_ms: int = 0

    @property
    def deleted(self) -> bool:
        return self.operation in DELETE_OPERATIONS


async def read_head(js: JetStreamContext, bucket: str, key: str) -> Head:
    """The key's last entry (a bus failure raises)."""
    try:
        msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True)
    except NotFoundError:
        return Head(None, 0)
    operation = str((msg.headers or {}).get("KV-Operation", ""))
    stored_ms = int(msg.time.timestamp() * 1000) if msg.time is not None else 0
    value = None if operation in DELETE_OPERATIONS else (msg.data or b"")
    return Head(value, int(msg.seq or 0), operation, stored_ms)


class Chained(Protocol):
    """A signed value that names the revision it replaced (UNCHAINED: an older layout) and when it was signed."""

    @property
    def prev_revision(self) -> int: ...

    @property
    def updated_at_ms(self) -> int: ...


C = TypeVar("C", bound=Chained)


async def read_chained(js: JetStreamContext, bucket: str, key: str, verify: Callable[[bytes], C],
                       ) -> tuple[C | None, Head, str]:
    """(value, head, problem): the key's newest value as ``verify`` decodes and checks it (SignatureError: refused),
    if it is its writer's newest; else None and why ("" with no value: the key was never written)."""
    head = await read_head(js, bucket, key)
    if head.deleted:
        return None, head, f"deleted ({head.operation} at revision {head.revision}); its writer never deletes it"
    if head.value is None:
        return None, head, ""
    try:
        value = verify(head.value)
    except SignatureError as exc:
        return None, head, str(exc)
    problem = await chain_problem(js, bucket, key, head, value.prev_revision, value.updated_at_ms)
    return (None if problem else value), head, problem


async def chain_problem(js: JetStreamContext, bucket: str, key: str, head: Head, prev_revision: int,
                        signed_at_ms: int) -> str:
    """Why ``head``'s value (signed, naming ``prev_revision``) is not the writer's newest; "" when it is."""
    if prev_revision == UNCHAINED:
        if head.stored_ms and abs(head.stored_ms - signed_at_ms) <= LEGACY_SKEW_MS:
            return ""
        return (f"a value of the old layout signed at {signed_at_ms} was stored at {head.stored_ms}: written again "
                "later (replayed)")
    if not 0 <= prev_revision < head.revision:
        return f"stored at revision {head.revision} but written after revision {prev_revision}"
    try:
        first = await js.get_msg(f"KV_{bucket}", seq=prev_revision + 1, subject=f"$KV.{bucket}.{key}", direct=True,
                                 next=True)
    except NotFoundError:
        return f"nothing stored after revision {prev_revision}"
    if int(first.seq or 0) != head.revision:
        return (f"written after revision {prev_revision}, but revision {first.seq} came between it and its own "
                f"{head.revision}: rolled back or replayed")
    return ""


async def write_after(js: JetStreamContext, bucket: str, key: str, value: bytes, prev_revision: int) -> int:
    """Store ``value`` if the key's last revision is still ``prev_revision`` (0: never written); its revision.
    The server refuses it otherwise (an APIError): somebody else wrote the key since it was read."""
    ack = await js.publish(f"$KV.{bucket}.{key}", value,
                           headers={"Nats-Expected-Last-Subject-Sequence": str(prev_revision)})
    return int(ack.seq)


async def write_chained(js: JetStreamContext, bucket: str, key: str, value_after: Callable[[int], bytes],
                        prev_revision: int) -> tuple[int, int]:
    """Store ``value_after(prev)`` on top of ``prev_revision``; (its revision, the revision of a write by somebody
    else it went on top of instead, or 0).

    For a key with one writer that keeps what it wrote in memory: if anybody else stored something on the key
    since (only a forger can, with the writer's credential and without its key), the write goes on top of the
    newest entry.  A forger who keeps writing cannot make the writer's write fail: after ``CHAINED_ATTEMPTS``
    refusals it is stored unconditionally on top of the newest entry read (if yet another write slipped in
    between, readers find the chain broken and the writer rewrites it at its next read; the value stands).
    The caller logs a non-zero second value."""
    try:
        return await write_after(js, bucket, key, value_after(prev_revision), prev_revision), 0
    except APIError as exc:
        if exc.err_code not in WRONG_LAST_SEQUENCE:
            raise
    for _ in range(CHAINED_ATTEMPTS - 1):
        head = await read_head(js, bucket, key)
        try:
            return await write_after(js, bucket, key, value_after(head.revision), head.revision), head.revision
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
    head = await read_head(js, bucket, key)
    ack = await js.publish(f"$KV.{bucket}.{key}", value_after(head.revision))
    return int(ack.seq), head.revision
