"""The executor says its newest snapshot again every SNAPSHOT_REFRESH_S.  Found by a review: the snapshot stream
keeps messages 30 days and the executor published one per cycle only, so a risk (re)started after a month without
cycles (ingest down) found no snapshot and skipped every stop-loss and kill-switch tick."""

from __future__ import annotations

import asyncio

import pytest

from services.executor import service as executor_service
from shared.contracts import PortfolioSnapshot, decode
from tests.bus_helpers import stream_messages, until
from tests.conftest import NatsEndpoint
from tests.integration.test_executor_refusals import executor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_the_newest_snapshot_is_published_again_while_no_cycle_comes(nats_server: NatsEndpoint,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_service, "SNAPSHOT_REFRESH_S", 0.3, raising=False)

    async def scenario() -> list[PortfolioSnapshot]:
        async with executor(nats_server) as rig:
            async def said_thrice() -> list[PortfolioSnapshot] | None:
                snaps = [decode(r, PortfolioSnapshot) for r in
                         await stream_messages(rig.operator, PortfolioSnapshot.SUBJECT)]
                return snaps if len(snaps) >= 3 else None

            return await until(said_thrice, "the snapshot said again", timeout=20)

    snaps = asyncio.run(scenario())
    assert {s.snapshot_id for s in snaps} == {snaps[0].snapshot_id} and snaps[0].status == "genesis"
    assert all(s.signature for s in snaps)
