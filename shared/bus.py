"""NATS / JetStream helpers every service uses: authenticated connect, publish under keyed message ids, bounded
dead letters, direct-get reads, bind-only KV, durable pulls (object stores: shared/objects.py).  Creating
streams, buckets and consumers is the operator's job (``shared.provision``): no service holds the right to."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from shared.bus_access import api_prefix, inbox_prefix
from shared.config import ConfigError, Settings
from shared.contracts import (
    DEAD_LETTER_PAYLOAD_PREFIX,
    PARAMS_BUCKET,
    STATE_BUCKET,
    ConsumerSpec,
    Contract,
    ContractError,
    DeadLetter,
    decode,
    encode,
    stream_of,
    subject_of,
)
from shared.credentials import CredentialError, bus_seed
from shared.logging import error, info, register_secret, warn
from shared.runfile import resolve_nats_url

C = TypeVar("C", bound=Contract)

MSG_ID_HEADER = "Nats-Msg-Id"
# JetStream deduplicates by Nats-Msg-Id per stream, not per subject, and several principals publish into the same
# streams (plans and aborts, events).  A deterministic id in the clear could be published first by another
# principal on its own subject, and the server would then drop the real message as a duplicate while the
# publisher's ack looked fine (a forged target's abort and its alert were suppressed that way).  The header is
# therefore a keyed hash of the id under a key only the publisher holds, derived from its own bus credential:
# its retries (and its restarts) still deduplicate, nobody else can name them.
_MSG_ID_KEY_LABEL = b"aura/nats-msg-id/v1"
# How long a message waits before it comes back when its dead letter could not be stored, or when a handler
# defect escaped: long enough not to spin, short enough that nothing sits unnoticed.
DEAD_LETTER_RETRY_S = 5.0
# A refused message whose dead letter still cannot be stored after this many deliveries is terminated with an
# error line naming its stream sequence: the consumer must move on (stop-loss exits queue behind it), and the
# message itself stays in its stream until max_age.
DEAD_LETTER_MAX_TRIES = 10


class BusNotProvisioned(RuntimeError):
    """A stream, bucket or consumer this service binds to does not exist: run `aura bus provision`."""


def client_options(settings: Settings, principal: str) -> dict[str, Any]:
    """Connection options for ``principal``: its NKey, its own inbox prefix, TLS when a CA is configured."""
    seed = bus_seed(settings.keys, principal)
    register_secret(seed)
    options: dict[str, Any] = {"nkeys_seed_str": seed, "inbox_prefix": inbox_prefix(principal),
                               "name": f"aura-{principal}"}
    if settings.nats_tls_ca_file:
        options["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
        options["tls_hostname"] = None
    return options


async def connect(settings: Settings, principal: str, logger: logging.Logger,
                  on_change: Callable[[bool], None] | None = None, connect_timeout_s: float = 30.0) -> NATS:
    """Connect as ``principal`` and keep reconnecting forever: a service that loses NATS resumes, it never
    crash-loops.  A refused credential is final (raised at once): retrying cannot fix it."""
    url = resolve_nats_url(settings)
    options = client_options(settings, principal)
    closing = {"flag": False}

    def changed(up: bool) -> None:
        if on_change:
            on_change(up)

    async def disconnected() -> None:
        if not closing["flag"]:
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
            nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                    disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=on_error,
                                    connect_timeout=2, allow_reconnect=True, **options)
            changed(True)
            info(logger, "BUS", "connected to NATS", url=url, principal=principal)
            nc._aura_closing = closing  # type: ignore[attr-defined]  # see close(): a clean stop is no disconnect
            return scope_jetstream(nc, principal, options["nkeys_seed_str"])
        except Exception as exc:
            if "authorization violation" in str(exc).lower():
                seed_path = settings.keys.bus_seed(principal)
                raise RuntimeError(f"NATS at {url} refused the {principal} credential ({seed_path}): was the server "
                                   "configured from another AURA_HOME's keys?") from None
            if time.monotonic() > deadline:
                error(logger, "BUS", "could not connect to NATS", url=url, error=str(exc))
                raise
            await asyncio.sleep(0.5)


def scope_jetstream(nc: NATS, principal: str, seed: str) -> NATS:
    """``nc.jetstream()`` calls JetStream's API where ``principal``'s account reaches it (its imports, under
    ``api_prefix``: shared/bus_access.py says why each principal has an account of its own), and carries the key
    its message ids are hashed under (``seed``: the principal's NKey seed; see ``msg_id_header``)."""
    prefix = api_prefix(principal)
    key = hmac.new(seed.encode(), _MSG_ID_KEY_LABEL, hashlib.sha256).digest()
    make = nc.jetstream

    def scoped(**opts: Any) -> JetStreamContext:
        js = make(**{"prefix": prefix, **opts})
        js._aura_msg_id_key = key  # type: ignore[attr-defined]
        return js

    nc.jetstream = scoped  # type: ignore[method-assign]
    return nc


def msg_id_header(js: JetStreamContext, subject: str, msg_id: str) -> dict[str, str]:
    """The ``Nats-Msg-Id`` header for a message whose deterministic id is ``msg_id``: a keyed hash only this
    publisher can compute (see ``_MSG_ID_KEY_LABEL``).  A context from ``connect``/``session`` is required: one
    without the key would publish guessable ids."""
    key = getattr(js, "_aura_msg_id_key", None)
    if not isinstance(key, bytes):
        raise TypeError("publish needs a JetStream context from shared.bus.connect or session (it holds the key "
                        "message ids are hashed under)")
    mac = hmac.new(key, f"{subject}\n{msg_id}".encode(), hashlib.sha256).hexdigest()[:32]
    return {MSG_ID_HEADER: mac}


async def close(nc: NATS) -> None:
    """Close without a "disconnected" warning: this disconnect is ours."""
    closing = getattr(nc, "_aura_closing", None)
    if closing is not None:
        closing["flag"] = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.flush(), timeout=2)
    with contextlib.suppress(Exception):
        await nc.close()


class BusUnavailable(RuntimeError):
    """The bus cannot be reached (or refuses this credential): said in one line, never a traceback."""


@contextlib.asynccontextmanager
async def session(settings: Settings, principal: str, timeout_s: float = 3.0) -> AsyncIterator[NATS]:
    """A short-lived connection for a command (the operator's CLI): no reconnect loop, one-line failures."""
    try:
        url = resolve_nats_url(settings)
        options = client_options(settings, principal)
    except (ConfigError, CredentialError) as exc:
        raise BusUnavailable(str(exc)) from None

    async def quiet(_exc: Exception) -> None:  # nats-py would print a traceback per failed attempt
        return None

    # nats-py discards a server only when max_reconnect_attempts > 0 (with 0 a refused port is retried forever):
    # one retry, and an overall bound in case a half-open socket never answers.
    started = time.monotonic()
    try:
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=timeout_s, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                         allow_reconnect=False, error_cb=quiet, **options),
            timeout=2 * timeout_s + 1)
    except Exception as exc:
        if isinstance(exc, TimeoutError):  # nats-py's own connect timeout, or the bound around it: say which came
            exc = TimeoutError(f"no answer within {time.monotonic() - started:.1f} s")
        reason = str(exc) or type(exc).__name__
        raise BusUnavailable(f"cannot reach the AURA bus at {url} as {principal}: {reason}") from None
    try:
        yield scope_jetstream(nc, principal, options["nkeys_seed_str"])
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def publish(js: JetStreamContext, msg: Contract, msg_id: str) -> js_api.PubAck:
    """Publish to the message's stream, deduplicated on its deterministic ``msg_id`` (a retry, or a restart that
    sends it again, is stored once) under a header nobody else can claim first (``msg_id_header``)."""
    subject = subject_of(msg)
    return await js.publish(subject, encode(msg), stream=stream_of(subject),
                            headers=msg_id_header(js, subject, msg_id), timeout=5)


# --- reads: direct gets, bind only ------------------------------------------------------------------------------


async def last_message(js: JetStreamContext, subject: str) -> bytes | None:
    """The newest message on ``subject`` (a direct get by subject), or None if the stream holds none."""
    try:
        raw = await js.get_last_msg(stream_of(subject), subject, direct=True)
    except NotFoundError:
        return None
    return raw.data


async def newest_valid(js: JetStreamContext, kind: type[C], max_back: int = 64) -> C | None:
    """The newest message on ``kind``'s subject that decodes as ``kind``, stepping back by sequence past malformed
    ones (at most ``max_back`` stream messages): junk on a subject is not an announcement, and must not hide the
    real one from a reader that checks against it.  None if there is none within reach."""
    stream = stream_of(kind.SUBJECT)
    try:
        msg = await js.get_last_msg(stream, kind.SUBJECT, direct=True)
    except NotFoundError:
        return None
    seq = int(msg.seq or 0)
    for _ in range(max_back):
        if msg.subject == kind.SUBJECT:
            try:
                return decode(msg.data or b"", kind)
            except ContractError:
                pass
        seq -= 1
        if seq < 1:
            return None
        try:
            msg = await js.get_msg(stream, seq=seq, direct=True)
        except NotFoundError:  # removed by the stream's limits: nothing older is there either
            return None
    return None


async def stored_messages(js: JetStreamContext, stream: str, subject: str, after_seq: int = 0,
                          limit: int = 1000) -> list[js_api.RawStreamMsg]:
    """At most ``limit`` messages on ``subject`` (wildcards allowed) stored in ``stream`` after ``after_seq``,
    oldest first: direct gets by sequence, so a reader pages through history without a consumer (and without the
    right to create one, see shared.bus_access)."""
    out: list[js_api.RawStreamMsg] = []
    seq = after_seq + 1
    while len(out) < limit:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, direct=True, next=True)
        except NotFoundError:
            break
        out.append(msg)
        seq = int(msg.seq or 0) + 1
    return out


BIND_TRIES = 3


async def bind_kv(js: JetStreamContext, bucket: str) -> KeyValue:
    """Bind to an existing bucket (never create it: a reader that creates buckets on a foreign server pollutes
    it, and services hold no right to)."""
    for _ in range(BIND_TRIES):
        try:
            return await js.key_value(bucket)
        except TimeoutError:
            # A server that is slow or paused, not a bucket that is missing: "run aura bus provision" would send
            # the operator the wrong way (found by an audit: a 24 s pause of the server said exactly that).
            await asyncio.sleep(1.0)
        except Exception as exc:
            raise BusNotProvisioned(f"KV bucket {bucket} is not available ({type(exc).__name__}: {exc}); run `aura "
                                    "bus provision` (aura up and compose do it before starting services)") from exc
    raise BusUnavailable(f"the bus did not answer for KV bucket {bucket} in {BIND_TRIES} tries: the server is slow "
                         "or overloaded (the bucket may well exist)")


async def params_kv(js: JetStreamContext) -> KeyValue:
    return await bind_kv(js, PARAMS_BUCKET)


async def state_kv(js: JetStreamContext) -> KeyValue:
    return await bind_kv(js, STATE_BUCKET)


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """(value, revision) or (None, 0) when the key does not exist (a bus failure raises)."""
    try:
        entry = await kv.get(key)
    except (NotFoundError, nats.js.errors.KeyNotFoundError):
        return None, 0
    if entry.value is None:
        return None, 0
    return entry.value, int(entry.revision or 0)


async def durable_pull(js: JetStreamContext, spec: ConsumerSpec) -> JetStreamContext.PullSubscription:
    """Bind to a provisioned durable pull consumer (it survives restarts of the service and of NATS)."""
    try:
        await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError as exc:
        raise BusNotProvisioned(f"durable consumer {spec.durable} on {spec.stream} does not exist; run "
                                "`aura bus provision`") from exc
    return await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)


# --- refusals ----------------------------------------------------------------------------------------------------


# What the error text of a dead letter may take of the letter once JSON-encoded: with the payload's prefix (4 KiB,
# base64) and the rest, a letter stays well inside the DLQ's 16 KiB max_msg_size whatever the text holds (a
# control character is six bytes in JSON, so a bound in characters is no bound).
DEAD_LETTER_ERROR_BYTES = 4096


def clip_json(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` (with "…" when cut) whose JSON encoding takes at most ``max_bytes``."""
    if len(msgspec.json.encode(text)) <= max_bytes:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits, by bisection: escapes make the cost per char vary
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(msgspec.json.encode(text[:mid] + "…")) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


async def dead_letter(js: JetStreamContext, logger: logging.Logger, service: str, subject: str, reason: str,
                      err: str, payload: bytes) -> bool:
    """Record a message we refuse, with the reason, on ``aura.dlq.<service>``; nothing is dropped silently.

    The letter carries a prefix of the payload with its size and sha256, so it fits the DLQ's limit whatever
    was refused.  False when it could not be stored: the caller then keeps the original (see settle_refused).
    """
    letter = DeadLetter(service=service, subject=clip_json(subject, 1024), reason=reason,
                        error=clip_json(err, DEAD_LETTER_ERROR_BYTES),
                        payload=payload[:DEAD_LETTER_PAYLOAD_PREFIX], received_at_ms=int(time.time() * 1000),
                        payload_size=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    # The payload's hash names the message: the console's alerts tell a refused message said again (a retry) from
    # another one like it (services/console/notify.py, INCIDENT_FIELDS).
    error(logger, "DEAD_LETTER", f"{reason}: {err[:300]}", subject=subject, bytes=len(payload),
          sha256=letter.payload_sha256)
    try:
        await js.publish(f"{DeadLetter.SUBJECT}.{service}", encode(letter), timeout=5)
    except Exception as exc:
        error(logger, "DEAD_LETTER", "could not publish dead letter; keeping the message for redelivery",
              error=f"{type(exc).__name__}: {exc}")
        return False
    return True


async def settle_refused(msg: Msg, recorded: bool, logger: logging.Logger | None = None) -> None:
    """Finish a refused message: terminate it once its dead letter is stored, else redeliver it later, but
    only so often: a message that cannot be dead-lettered must not block its consumer forever."""
    deliveries = msg.metadata.num_delivered if msg.metadata else 1
    if recorded:
        await msg.term()
    elif deliveries < DEAD_LETTER_MAX_TRIES:
        await msg.nak(delay=DEAD_LETTER_RETRY_S)
    else:
        seq = msg.metadata.sequence.stream if msg.metadata else None
        if logger is not None:
            error(logger, "DEAD_LETTER", "refused message could not be dead-lettered; terminating it so the "
                  "consumer moves on (it stays in its stream)", subject=msg.subject, stream_seq=seq,
                  deliveries=deliveries, bytes=len(msg.data), sha256=hashlib.sha256(msg.data).hexdigest())
        await msg.term()
