"""The executor's newest snapshot ageing out of its stream (30 days without a cycle, ingest down) must not stop
risk's ticks: they skipped every tick ("no verified portfolio snapshot") while /readyz stayed green, so nothing
checked the stops or the kill-switch any more.  Risk keeps the last snapshot it verified as the basis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from services.risk import inputs as inputs_module
from services.risk.inputs import RiskInputs
from shared.contracts import PortfolioSnapshot, encode
from shared.credentials import signing_key
from shared.health import HealthState
from shared.signing import sign_struct
from tests.conftest import NatsEndpoint
from tests.risk.test_tick import snapshot

pytestmark = pytest.mark.integration


def test_the_last_verified_snapshot_stays_the_basis_once_the_stream_holds_none(
        nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = nats_server.settings()
    signed = sign_struct(snapshot(), signing_key(settings.keys, "executor"))
    stored: list[bytes | None] = [encode(signed)]

    async def last_message(js: Any, subject: str) -> bytes | None:
        assert subject == PortfolioSnapshot.SUBJECT
        return stored[0]

    monkeypatch.setattr(inputs_module, "last_message", last_message)
    risk = RiskInputs(None, None, settings, HealthState(service="risk"),  # type: ignore[arg-type]
                      logging.getLogger("aura.test.snapshot_expiry"))

    async def reads() -> tuple[PortfolioSnapshot | None, PortfolioSnapshot | None]:
        first = await risk.snapshot()
        stored[0] = None  # max_age passed: the stream holds no snapshot any more
        return first, await risk.snapshot()

    first, after = asyncio.run(reads())
    assert first == signed and after == signed
    fresh = RiskInputs(None, None, settings, HealthState(service="risk"),  # type: ignore[arg-type]
                       logging.getLogger("aura.test.snapshot_expiry"))
    assert asyncio.run(fresh.snapshot()) is None  # a risk that never verified one has no basis to invent
