"""NATS / JetStream helpers every service uses: connect, streams, publish-with-id, dead letters, KV, objects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared.candles import digest
from shared.contracts import (
    CANDLE_BUCKET,
    PARAMS_BUCKET,
    STATE_BUCKET,
    STREAM_OF_SUBJECT,
    STREAMS,
    Contract,
    DeadLetter,
    encode,
)
from shared.logging import error, info, warn

MSG_ID_HEADER = "Nats-Msg-Id"
# How long a message waits before it comes back when its dead letter could not be stored, or when a handler
# defect escaped: long enough not to spin, short enough that nothing sits unnoticed.
DEAD_LETTER_RETRY_S = 5.0


async def connect(url: str, name: str, logger: logging.Logger,
                  on_change: Callable[[bool], None] | None = None, connect_timeout_s: float = 30.0) -> NATS:
    """Connect and keep reconnecting forever: a service that loses NATS resumes, it never crash-loops."""

    def changed(up: bool) -> None:
        if on_change:
            on_change(up)

    async def disconnected() -> None:
        warn(logger, "BUS", "disconnected from NATS; reconnecting", url=url)
        changed(False)

    async def reconnected() -> None:
        info(logger, "BUS", "reconnected to NATS", url=url)
        changed(True)

    async def on_error(exc: Exception) -> None:
        warn(logger, "BUS", "NATS client error", error=str(exc))

    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            nc = await nats.connect(url, name=f"aura-{name}", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                    disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=on_error,
                                    connect_timeout=2, allow_reconnect=True)
            changed(True)
            info(logger, "BUS", "connected to NATS", url=url)
            return nc
        except Exception as exc:
            if time.monotonic() > deadline:
                error(logger, "BUS", "could not connect to NATS", url=url, error=str(exc))
                raise
            await asyncio.sleep(0.5)


async def ensure_streams(js: JetStreamContext, dedup_window_s: float) -> None:
    """Create (or update) every stream; the duplicate window drops republished messages with the same id."""
    for spec in STREAMS:
        config = js_api.StreamConfig(
            name=spec.name, subjects=list(spec.subjects), storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS, max_age=spec.max_age_s, max_msgs=spec.max_msgs,
            duplicate_window=dedup_window_s, allow_direct=True,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def publish(js: JetStreamContext, msg: Contract, msg_id: str) -> js_api.PubAck:
    """Publish to the message's stream with ``Nats-Msg-Id`` = its deterministic id (dedup on retry)."""
    return await js.publish(msg.SUBJECT, encode(msg), stream=STREAM_OF_SUBJECT.get(msg.SUBJECT),
                            headers={MSG_ID_HEADER: msg_id}, timeout=5)


async def verified_candles(store: ObjectStore, content_digest: str) -> bytes | None:
    """The candle object named ``content_digest``; None when its bytes do not hash to that name.  An absent
    object raises the object store's not-found error, a bus failure its own error: callers decide."""
    blob = await store.get(content_digest)
    data = blob.data or b""
    return data if digest(data) == content_digest else None


async def dead_letter(js: JetStreamContext, logger: logging.Logger, service: str, subject: str, reason: str,
                      err: str, payload: bytes) -> bool:
    """Record a message we refuse, with the reason, on ``aura.dlq.<service>``; nothing is dropped silently.

    False when the record could not be stored: the caller must then keep the original message (nak it, not
    term it), or the payload would exist nowhere.
    """
    letter = DeadLetter(service=service, subject=subject, reason=reason, error=err[:2000], payload=payload,
                        received_at_ms=int(time.time() * 1000))
    error(logger, "DEAD_LETTER", f"{reason}: {err[:300]}", subject=subject, bytes=len(payload))
    try:
        await js.publish(f"{DeadLetter.SUBJECT}.{service}", encode(letter), timeout=5)
    except Exception as exc:
        error(logger, "DEAD_LETTER", "could not publish dead letter; keeping the message for redelivery",
              error=f"{type(exc).__name__}: {exc}")
        return False
    return True


async def settle_refused(msg: Msg, recorded: bool) -> None:
    """Finish a refused message: terminate it once its dead letter is stored, else redeliver it later."""
    if recorded:
        await msg.term()
    else:
        await msg.nak(delay=DEAD_LETTER_RETRY_S)


async def key_value(js: JetStreamContext, bucket: str, history: int = 5) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except Exception:  # absent (or not yet visible after a restart): create it, or bind to a racing creator
        try:
            return await js.create_key_value(js_api.KeyValueConfig(bucket=bucket, history=history,
                                                                   storage=js_api.StorageType.FILE))
        except BadRequestError:
            return await js.key_value(bucket)


async def params_kv(js: JetStreamContext) -> KeyValue:
    return await key_value(js, PARAMS_BUCKET, history=20)


async def state_kv(js: JetStreamContext) -> KeyValue:
    return await key_value(js, STATE_BUCKET)


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """(value, revision) or (None, 0) when the key does not exist."""
    try:
        entry = await kv.get(key)
    except Exception:
        return None, 0
    if entry.value is None:
        return None, 0
    return entry.value, int(entry.revision or 0)


async def candle_store(js: JetStreamContext, ttl_s: float = 3 * 86400) -> ObjectStore:
    try:
        return await js.object_store(CANDLE_BUCKET)
    except Exception:
        try:
            return await js.create_object_store(CANDLE_BUCKET, config=js_api.ObjectStoreConfig(
                bucket=CANDLE_BUCKET, ttl=ttl_s, storage=js_api.StorageType.FILE))
        except BadRequestError:
            return await js.object_store(CANDLE_BUCKET)


async def last_message(js: JetStreamContext, subject: str) -> bytes | None:
    """The newest message on ``subject`` (direct get), or None if the stream holds none."""
    try:
        raw = await js.get_last_msg(STREAM_OF_SUBJECT[subject], subject)
    except NotFoundError:
        return None
    return raw.data


async def durable_pull(js: JetStreamContext, subject: str, durable: str, ack_wait_s: float = 60.0,
                       max_ack_pending: int = 1, stream: str | None = None) -> JetStreamContext.PullSubscription:
    """A durable pull consumer: survives restarts of the service and of NATS (file storage)."""
    config = js_api.ConsumerConfig(durable_name=durable, ack_policy=js_api.AckPolicy.EXPLICIT,
                                   ack_wait=ack_wait_s, max_ack_pending=max_ack_pending,
                                   deliver_policy=js_api.DeliverPolicy.ALL, filter_subject=subject,
                                   max_deliver=-1)
    return await js.pull_subscribe(subject, durable=durable, stream=stream or STREAM_OF_SUBJECT[subject],
                                   config=config)


async def pull_loop(sub: JetStreamContext.PullSubscription, handler: Callable[[Any], Awaitable[None]],
                    stop: asyncio.Event, logger: logging.Logger, batch: int = 1) -> None:
    """Fetch and handle messages one at a time until ``stop``; transient bus errors are retried, not fatal."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except Exception as exc:
            warn(logger, "BUS", "fetch failed; retrying", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
            continue
        for msg in msgs:
            try:
                await handler(msg)
            except Exception as exc:
                # Handlers settle their own messages; this is the backstop for a defect that escapes one, so a
                # bad message costs a log line and a delayed redelivery, never the service process.
                error(logger, "HANDLER_ERROR", "unhandled error; message redelivered later", subject=msg.subject,
                      error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await msg.nak(delay=DEAD_LETTER_RETRY_S)
