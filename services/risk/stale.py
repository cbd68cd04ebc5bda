"""How far ahead an ingest stale-data notice may be dated, and against which clock.

A ``DataStale`` notice makes risk refuse every target on older data, so a notice dated far ahead would block
trading for as long as it stays the newest (a compromised ingest, a wrong clock).  It is refused when dated more
than one bar after "now", where now is the data's clock, never blindly the machine's:

* live (a venue with a clock): the exchange's time;
* a dry run on live data (``ingest_source=sync``, paper broker): the local clock, since live bars are now;
* the replay: the newest bar ingest announced, or the newest notice already adopted when that is later (two
  incomplete bars in a row are each one bar after the one before); by the local clock a notice dated today would
  block every replayed target.
"""

from __future__ import annotations

import contextlib
import time

from services.risk.inputs import RiskInputs
from services.risk.prices import PriceSource
from shared.contracts import DataStale


async def notice_clock(prices: PriceSource, inputs: RiskInputs, ingest_source: str,
                       adopted: DataStale | None) -> tuple[int, str]:
    """(now in ms, what that now is) for bounding a stale notice."""
    with contextlib.suppress(Exception):
        venue = await prices.exchange_ms()
        if venue is not None:
            return int(venue), "the exchange's clock"
        if ingest_source == "replay":
            ready = await inputs.newest_ready()
            if ready is not None:
                if adopted is not None and adopted.as_of_ms > ready.as_of_ms:
                    return adopted.as_of_ms, "the newest stale notice (after the newest announced bar)"
                return ready.as_of_ms, "the newest announced bar"
    return int(time.time() * 1000), "the local clock"
