"""Provision the bus: every stream, bucket and durable consumer, with its limits, created or updated with the
admin credential (``aura bus provision``; ``aura up`` and the compose ``provision`` job run it before any service).

Limits are set on purpose (ARCHITECTURE.md, "Limits"): per-message sizes stop one oversized message from
reaching a consumer at all, and byte and age limits bound what a flood can cost on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from shared.contracts import (
    CANDLE_BUCKET,
    CONSUMERS,
    KIB,
    MAX_PAYLOAD,
    MIB,
    OPT_INPUTS_BUCKET,
    PARAMS_BUCKET,
    STATE_BUCKET,
    STREAMS,
    ConsumerSpec,
)
from shared.logging import info

CANDLE_TTL_S = 3 * 86400
CANDLE_MAX_BYTES = 1024 * MIB  # oldest objects go first (a 41-symbol daily panel is ~0.8 MB)
# The optimizer's inputs (a 41-symbol daily panel with its benchmarks is ~5 MB, a CSCV matrix under 1 MB): a day
# is longer than any run, and a run whose inputs went missing writes them again.
OPT_INPUTS_TTL_S = 86400
OPT_INPUTS_MAX_BYTES = 1024 * MIB
# Bucket name -> (history per key, max value size, max bytes).
BUCKETS = {PARAMS_BUCKET: (64, 64 * KIB, 64 * MIB), STATE_BUCKET: (5, 64 * KIB, 64 * MIB)}


def stream_configs(dedup_window_s: float) -> list[js_api.StreamConfig]:
    configs = [js_api.StreamConfig(
        name=spec.name, subjects=list(spec.subjects), storage=js_api.StorageType.FILE,
        retention=js_api.RetentionPolicy(spec.retention),
        # A full work queue refuses new tasks (the coordinator hears it) rather than dropping queued ones unseen.
        discard=js_api.DiscardPolicy.NEW if spec.retention == "workqueue" else js_api.DiscardPolicy.OLD,
        max_age=spec.max_age_s, max_msgs=spec.max_msgs, max_bytes=spec.max_bytes, max_msg_size=spec.max_msg_size,
        max_msgs_per_subject=spec.max_msgs_per_subject, duplicate_window=dedup_window_s, allow_direct=True)
        for spec in STREAMS]
    # The candle object store's stream, as nats-py would make it, but with bounds: discard OLD so a long fast
    # replay drops its oldest panels instead of refusing new ones.
    for bucket, ttl, max_bytes in ((CANDLE_BUCKET, CANDLE_TTL_S, CANDLE_MAX_BYTES),
                                   (OPT_INPUTS_BUCKET, OPT_INPUTS_TTL_S, OPT_INPUTS_MAX_BYTES)):
        configs.append(js_api.StreamConfig(
            name=f"OBJ_{bucket}", subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
            storage=js_api.StorageType.FILE, retention=js_api.RetentionPolicy.LIMITS,
            discard=js_api.DiscardPolicy.OLD, max_age=ttl, max_bytes=max_bytes, max_msg_size=MAX_PAYLOAD,
            allow_rollup_hdrs=True, allow_direct=True))
    # Buckets refuse rollup headers: a `Nats-Rollup: all` published on the one key a principal may write would purge
    # every other key of the bucket (risk's latch among them).  AURA never purges a key, so nothing needs them.
    # Each writer is granted exact keys (shared/state_keys.py), so history x value size x keys bounds what all
    # writers can store below max_bytes: nobody can fill a bucket against another's writes.
    for bucket, (history, value_size, max_bytes) in BUCKETS.items():
        configs.append(js_api.StreamConfig(
            name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS, discard=js_api.DiscardPolicy.NEW, max_msgs_per_subject=history,
            max_bytes=max_bytes, max_msg_size=value_size, allow_rollup_hdrs=False, deny_delete=True,
            deny_purge=True, allow_direct=True, duplicate_window=120.0))
    return configs


async def provision_bus(js: JetStreamContext, dedup_window_s: float, logger: logging.Logger | None = None,
                        consumers: Mapping[str, ConsumerSpec] | None = None) -> None:
    """Create or update every stream, bucket and durable consumer (idempotent).  ``consumers``: the durable
    consumers to provision instead of ``CONSUMERS`` (a test lab's shorter ack wait); production never passes it."""
    for config in stream_configs(dedup_window_s):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
    for spec in (CONSUMERS if consumers is None else consumers).values():
        config = js_api.ConsumerConfig(durable_name=spec.durable, ack_policy=js_api.AckPolicy.EXPLICIT,
                                       ack_wait=spec.ack_wait_s, max_ack_pending=spec.max_ack_pending,
                                       deliver_policy=js_api.DeliverPolicy.NEW if spec.deliver_new else
                                       js_api.DeliverPolicy.ALL, filter_subject=spec.filter_subject,
                                       max_deliver=spec.max_deliver)
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            await js.add_consumer(spec.stream, config)
    if logger is not None:
        info(logger, "BOOT", "bus provisioned", streams=[s.name for s in STREAMS], consumers=sorted(CONSUMERS))
