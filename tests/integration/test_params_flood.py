"""A flood of junk parameter writes (issue 8, parameters), on a real secured nats-server.

The bucket keeps 64 entries of the parameter key.  Whoever holds a credential that may write it (the optimizer's,
the operator's) but not a signing key can push every signed version out of that history with 64 junk writes.  A
running service keeps the version it verified; a service that starts then finds nothing that verifies and runs
the shipped defaults instead of the operator's choice.  That start was silent (readiness green): it is now red,
naming why, until a valid version is written.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from aura.strategy.params import StrategyParams
from shared.bus import close, params_kv
from shared.credentials import PARAMS_SIGNERS, trusted_keys
from shared.health import HealthState
from shared.live_params import PARAMS_KEY
from shared.params_tracker import ParamsTracker
from tests.conftest import NatsEndpoint
from tests.integration.test_params_timeframe_live import operator_doc, put, tracked

pytestmark = pytest.mark.integration


async def junk(nats: NatsEndpoint, count: int) -> None:
    nc = await nats.connect("operator")
    try:
        kv = await params_kv(nc.jetstream())
        for i in range(count):
            await kv.put(PARAMS_KEY, f"junk {i}".encode())
    finally:
        await close(nc)


async def start_tracker(nats: NatsEndpoint, running: ParamsTracker | None = None) -> tuple[ParamsTracker, int]:
    """(tracker, version in force) after reading the bucket: ``running``'s (a service that was up) or a new one's
    (a service that starts now)."""
    nc = await nats.connect("signal")
    try:
        tracker = running or ParamsTracker(nc.jetstream(), trusted_keys(nats.settings().keys, "signal", PARAMS_SIGNERS),
                                           HealthState(service="signal"), logging.getLogger("aura.test.flood"),
                                           max_loss_bound=0.5)
        tracker.js = nc.jetstream()
        _, version = await tracker.current()
        return tracker, version
    finally:
        await close(nc)


def test_a_start_after_a_junk_flood_runs_the_defaults_only_with_readiness_red(nats_server: NatsEndpoint) -> None:
    chosen = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=2))))
    running, version = asyncio.run(start_tracker(nats_server))
    assert version == chosen and running.check()[0]

    asyncio.run(junk(nats_server, 64))  # the signed version is no longer in the key's history
    running, version = asyncio.run(start_tracker(nats_server, running))
    assert version == chosen and running.check()[0], "a running service keeps what it verified"
    assert "refused version" in running.check()[1]

    restarted, version = asyncio.run(start_tracker(nats_server))
    ready, why = restarted.check()
    assert version == 0 and not ready, why
    assert "shipped defaults are in force" in why and f"up to revision {chosen + 64}" in why

    fixed = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=3))))
    restarted, version = asyncio.run(start_tracker(nats_server, restarted))
    assert version == fixed and restarted.check()[0], restarted.check()


def test_a_start_with_only_a_few_junk_entries_takes_the_newest_valid_version(nats_server: NatsEndpoint) -> None:
    chosen = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=2))))
    asyncio.run(junk(nats_server, 5))
    tracker, version = asyncio.run(start_tracker(nats_server))
    assert version == chosen and tracker.check()[0], tracker.check()


@pytest.mark.parametrize("refused", ["junk", "other_timeframe"])
def test_a_running_service_takes_a_valid_version_a_refused_one_was_written_over(nats_server: NatsEndpoint,
                                                                                 refused: str) -> None:
    """Between two polls of a running signal the operator promotes v2, then something refused lands on top (a junk
    write with an optimizer or operator credential, or an honest document made for other bars).  The running
    service looked at the newest only and kept v1 while a restarted risk took v2: risk then refused every target
    as made with superseded parameters, readiness green.  Now it falls back to v2, as a start does."""
    v1 = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=2))))
    running: dict[str, ParamsTracker] = {}
    _, version, _ = asyncio.run(tracked(nats_server, "signal", "1d", running))
    assert version == v1

    v2 = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=3))))
    if refused == "junk":
        asyncio.run(junk(nats_server, 1))
    else:
        asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=4), {"timeframe": "4h"})))

    _, running_version, tracker = asyncio.run(tracked(nats_server, "signal", "1d", running))
    _, fresh_version, _ = asyncio.run(tracked(nats_server, "risk", "1d"))  # risk restarted (or polled in between)
    assert fresh_version == v2
    assert running_version == v2, (f"running signal keeps version {running_version}, a (re)started risk has "
                                   f"{fresh_version}; signal readiness: {tracker.check()}")
    assert f"refused version {v2 + 1}" in tracker.check()[1]  # the refused one on top is still said
