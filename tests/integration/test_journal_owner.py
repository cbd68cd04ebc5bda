"""One executor per journal (services/executor/journal_owner.py), on a real secured nats-server and journal: a
second executor started beside a running one (compose --scale, a service started by hand, a restart racing the
old process) waits with /readyz red and writes nothing, and takes over once the first one stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.executor import service as executor_service
from shared.bus import connect
from shared.health import HealthState
from shared.service import ServiceContext
from tests.bus_helpers import journal_rows, running, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_second_executor_waits_for_the_journal_and_takes_over_when_the_first_stops(
        nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()

    async def scenario() -> tuple[tuple[bool, str], int, int, tuple[bool, str]]:
        logger = logging.getLogger("aura.test.second_executor")
        async with running(settings, "executor"):
            snapshots = len(journal_rows(settings, "SELECT seq FROM snapshots"))
            nc = await connect(settings, "executor", logger, connect_timeout_s=10)
            second = ServiceContext("executor", settings, logger, nc, nc.jetstream(), HealthState(service="executor"),
                                    asyncio.Event())
            body = asyncio.create_task(executor_service.run(second))

            async def waiting() -> bool:
                ok, why = second.health.checks.get("journal", lambda: (True, ""))()
                return not ok and "held by executor pid" in why

            await until(waiting, "the second executor to wait for the journal", 30)
            await asyncio.sleep(3)  # more than a retry: it keeps waiting, and writes nothing meanwhile
            held = second.health.checks["journal"]()
            still = len(journal_rows(settings, "SELECT seq FROM snapshots"))
        # The first one has stopped (and closed its journal): the second takes the journal over.
        async def took_over() -> bool:
            return second.health.checks["journal"]() == (True, "writable")  # the executor's own check, once built

        try:
            await until(took_over, "the second executor to take the journal over", 30)
            after = second.health.checks["journal"]()
        finally:
            second.stop.set()
            await asyncio.wait_for(body, 20)
            await nc.close()
        return held, snapshots, still, after

    held, snapshots, still, after = asyncio.run(scenario())
    assert not held[0] and "held by executor pid" in held[1], held
    assert still == snapshots, "the waiting executor wrote to the journal"
    assert after[0], f"the second executor did not take the journal over: {after}"
