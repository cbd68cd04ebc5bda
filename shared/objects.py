"""The object stores read and written as the pipeline needs them: candle panels (ingest writes, signal, risk and
the console read) and the optimizer's inputs.  Reads use direct gets only, and believe an object's meta no
further than the reader's own bound: the meta is the writer's word."""

from __future__ import annotations

import base64
import json

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import OBJ_DEFAULT_CHUNK_SIZE, ObjectStore

from shared.bus import BusNotProvisioned
from shared.candles import digest
from shared.contracts import CANDLE_BUCKET, CANDLE_OBJECT_MAX_BYTES


class ObjectTooLarge(ValueError):
    """An object larger than its reader accepts (its meta says so, or its chunks add up to more than it said)."""


async def read_object(js: JetStreamContext, bucket: str, name: str, max_bytes: int | None = None) -> bytes:
    """An object-store object read with direct gets only (meta by subject, then its chunks in order).

    nats-py's ObjectStore.get reads through an ordered push consumer, which would need the right to create
    consumers (see shared.bus_access); direct gets need only read rights on the bucket.  NotFoundError if the
    object does not exist; ObjectTooLarge, before any chunk is read, if its meta claims more than ``max_bytes``,
    and as soon as its chunks pass the size it claimed (the writer sets both).
    """
    stream = f"OBJ_{bucket}"
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    meta = await js.get_last_msg(stream, meta_subject, direct=True)
    info_doc = json.loads(meta.data or b"{}")
    if info_doc.get("deleted"):
        raise NotFoundError
    chunk_subject = f"$O.{bucket}.C.{info_doc['nuid']}"
    size, chunks = int(info_doc.get("size", 0)), int(info_doc.get("chunks", 0))
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(f"object {name[:16]} claims {size} bytes, more than the {max_bytes} its reader accepts")
    # One direct get per chunk: a meta claiming many tiny (or empty) chunks made every read thousands of round
    # trips, 20 s for 50,000 empty ones, and risk read the object on each tick under its lock (found by an audit).
    # Every writer here is nats-py's put, whose chunks are full but the last: no more than the size needs.
    if chunks > -(-size // OBJ_DEFAULT_CHUNK_SIZE):
        raise ObjectTooLarge(f"object {name[:16]} claims {chunks} chunks for {size} bytes, more than "
                             f"{OBJ_DEFAULT_CHUNK_SIZE}-byte chunks need")
    out = bytearray()
    seq = 1
    for _ in range(chunks):
        chunk = await js.get_msg(stream, seq=seq, subject=chunk_subject, direct=True, next=True)
        if not chunk.data:
            raise ValueError(f"object {name[:16]} has an empty chunk")
        out += chunk.data
        if len(out) > size:
            raise ObjectTooLarge(f"object {name[:16]} holds more than the {size} bytes its meta claims")
        seq = int(chunk.seq or 0) + 1
    if len(out) != size:
        raise ValueError(f"object {name[:16]} has {len(out)} bytes, its meta says {size}")
    return bytes(out)


async def verified_candles(js: JetStreamContext, content_digest: str) -> bytes | None:
    """The candle object named ``content_digest``; None when its bytes do not hash to that name.  An absent
    object raises NotFoundError, one over CANDLE_OBJECT_MAX_BYTES ObjectTooLarge, a bus failure its own error:
    callers decide."""
    data = await read_object(js, CANDLE_BUCKET, content_digest, CANDLE_OBJECT_MAX_BYTES)
    return data if digest(data) == content_digest else None


async def candle_writer(js: JetStreamContext) -> ObjectStore:
    """The candle object store, bound for writing (ingest only)."""
    try:
        return await js.object_store(CANDLE_BUCKET)
    except Exception as exc:
        raise BusNotProvisioned(f"object store {CANDLE_BUCKET} is not available ({type(exc).__name__}); run "
                                "`aura bus provision`") from exc
