"""A stale-data notice is news once.  Found by an audit: every (re)start of risk re-read the newest notice and
warned [DATA_STALE] again, so the console alerted a days-old stale bar as a fresh incident after each restart.
Adopted at boot it is logged at INFO (no event, no alert); a notice arriving while risk runs still warns."""

from __future__ import annotations

import asyncio
import logging
import types

import pytest

from services.risk.service import Risk
from shared.config import load_settings
from shared.contracts import DataStale
from shared.events import EVENT_TAGS
from shared.health import HealthState
from tests.bus_helpers import Capture

STALE = DataStale(cycle_id="1d-20240101T0000", timeframe="1d", reason="3 symbols missing", as_of_ms=1_704_067_200_000)


def adopt(at_boot: bool) -> logging.LogRecord:
    """Risk.on_stale on a risk whose clock is the data's (replay), five days after the stale bar."""
    capture = Capture()
    logger = logging.getLogger(f"aura.test.stale_at_boot.{at_boot}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)

    async def no_exchange_clock() -> None:
        return None

    async def newest_ready() -> types.SimpleNamespace:
        return types.SimpleNamespace(as_of_ms=STALE.as_of_ms + 5 * 86_400_000)

    async def run() -> None:
        risk = types.SimpleNamespace(
            lock=asyncio.Lock(), stale=None, prices=types.SimpleNamespace(exchange_ms=no_exchange_clock),
            inputs=types.SimpleNamespace(newest_ready=newest_ready),
            ctx=types.SimpleNamespace(settings=load_settings({"AURA_TIMEFRAME": "1d"}, places_orders=False),
                                      health=HealthState(service="risk"), logger=logger))
        await Risk.on_stale(risk, STALE, at_boot=at_boot)  # type: ignore[arg-type]
        assert risk.stale == STALE  # adopted either way: no plan on data older than it

    asyncio.run(run())
    logger.removeHandler(capture)
    [record] = [r for r in capture.records if getattr(r, "tag", None) == "DATA_STALE"]
    return record


@pytest.mark.parametrize(("at_boot", "alerted"), [(True, False), (False, True)])
def test_a_stale_notice_adopted_at_boot_is_not_news(at_boot: bool, alerted: bool) -> None:
    record = adopt(at_boot)
    assert (record.levelno >= EVENT_TAGS["DATA_STALE"]) is alerted, (record.levelname, record.getMessage())
