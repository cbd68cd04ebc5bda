"""Every stream and bucket the operator provisions carries the limits ARCHITECTURE.md's "Limits" table promises,
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
        nc = await nats_server.connect("operator")
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
