"""Every stream and bucket the admin credential provisions carries the limits ARCHITECTURE.md's "Limits" table promises,
read back from a real nats-server: a flood costs bounded disk, one message cannot exceed what its consumer takes.

The expected figures are written here from the table, independently of shared/contracts.py and
shared/provision.py, so that a changed limit fails until the table (and this test) say why.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
KIB, MIB, DAY = 1024, 1024 * 1024, 86_400.0

# stream -> (max_bytes, max_age in seconds, max_msg_size, discard)
EXPECTED = {
    "AURA_DATA": (256 * MIB, 7 * DAY, 64 * KIB, "old"),
    "AURA_TARGETS": (256 * MIB, 7 * DAY, 64 * KIB, "old"),
    "AURA_PLANS": (256 * MIB, 30 * DAY, 64 * KIB, "old"),
    "AURA_EXEC": (512 * MIB, 30 * DAY, 64 * KIB, "old"),
    "AURA_DLQ": (256 * MIB, 30 * DAY, 16 * KIB, "old"),
    "AURA_EVENTS": (64 * MIB, 7 * DAY, 8 * KIB, "old"),
    "OBJ_aura_candles": (1024 * MIB, 3 * DAY, 256 * KIB, "old"),
    "AURA_OPT_TASKS": (256 * MIB, DAY, 64 * KIB, "new"),
    "AURA_OPT_RESULTS": (1024 * MIB, DAY, 192 * KIB, "old"),
    "OBJ_aura_opt_inputs": (1024 * MIB, DAY, 256 * KIB, "old"),
    # KV: no age limit (state must survive), discard new (a full bucket refuses, it never drops the latch).
    "KV_aura_params": (64 * MIB, 0.0, 64 * KIB, "new"),
    "KV_aura_state": (64 * MIB, 0.0, 64 * KIB, "new"),
}


def test_provisioned_streams_carry_the_documented_limits(nats_server: NatsEndpoint) -> None:
    async def read() -> dict[str, tuple[int, float, int, str]]:
        nc = await nats_server.connect("admin")  # the streams' info, the optimizer's and object stores' too
        try:
            js = nc.jetstream()
            out = {}
            for name in EXPECTED:
                config = (await js.stream_info(name)).config
                discard = getattr(config.discard, "value", config.discard) or "old"
                out[name] = (int(config.max_bytes or -1), float(config.max_age or 0.0),
                             int(config.max_msg_size or -1), str(discard))
            return out
        finally:
            await nc.close()

    assert asyncio.run(read()) == EXPECTED


def test_a_flood_of_aborts_never_pushes_an_unread_plan_out_of_the_plans_stream(nats_server: NatsEndpoint) -> None:
    """Ingest, signal and risk may each publish aborts on AURA_PLANS, beside risk's plans.  With only the stream's
    byte limit (discard old), 60 KB aborts from a compromised signal evicted a signed plan the executor had not read
    yet.  Each subject now keeps its own newest 1000, and four subjects of 1000 messages of at most 64 KiB cannot
    reach the byte limit: the flood drops its own oldest aborts, the plan stays."""
    per_subject, subjects = 1000, 4  # the table's figure; aura.plans.approved and three abort subjects

    async def scenario() -> dict[str, int]:
        out: dict[str, int] = {}
        nc_risk, nc_signal, nc_op = [await nats_server.connect(p) for p in ("risk", "signal", "admin")]
        try:
            config = (await nc_op.jetstream().stream_info("AURA_PLANS")).config
            out["per_subject"] = int(config.max_msgs_per_subject or -1)
            out["room"] = int(config.max_bytes or 0) - subjects * per_subject * int(config.max_msg_size or 0)
            plan = await nc_risk.jetstream().publish("aura.plans.approved", b'{"v":1,"plan":"unread"}')
            junk = b'{"v":1,"cycle_id":"junk","stage":"signal","reason":"' + b"x" * 60_000 + b'"}'
            js = nc_signal.jetstream()
            # More than the byte limit holds (4,600 x 60 KB = 276 MB > 256 MiB): without the per-subject cap the
            # stream would drop its oldest message, the plan.
            for _ in range(4600):
                await js.publish("aura.plans.aborted.signal", junk)
            kept = await nc_op.jetstream().get_msg("AURA_PLANS", seq=plan.seq)
            out["plan_kept"] = int(kept.data == b'{"v":1,"plan":"unread"}')
            info = await nc_op.jetstream().stream_info("AURA_PLANS", subjects_filter="aura.plans.aborted.signal")
            out["aborts_kept"] = int((info.state.subjects or {}).get("aura.plans.aborted.signal", 0))
        finally:
            for nc in (nc_risk, nc_signal, nc_op):
                await nc.close()
        return out

    out = asyncio.run(scenario())
    assert out["per_subject"] == per_subject
    assert out["room"] > 0, "four full subjects could reach the byte limit and evict across subjects"
    assert out["plan_kept"] == 1, "the flood pushed the unread plan out"
    assert out["aborts_kept"] == per_subject, out
