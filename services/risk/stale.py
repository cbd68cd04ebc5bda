"""How far ahead an ingest stale-data notice may be dated, and against which clock.

A ``DataStale`` notice makes risk refuse every target on older data, so a notice dated far ahead would block
trading for as long as it stays the newest (a compromised ingest, a wrong clock).  It is refused when dated more
than one bar after "now", where now is the data's clock, never blindly the machine's:

* live (a venue with a clock): the exchange's time;
* a dry run on live data (``ingest_source=sync``, paper broker): the local clock, since live bars are now;
* the replay: the newest bar ingest announced, or the newest notice already adopted when that is later (two
  incomplete bars in a row are each one bar after the one before); by the local clock a notice dated today would
  block every replayed target.

``follow_notices`` hands risk every notice ingest publishes, and the newest one already published at boot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from services.risk.inputs import RiskInputs
from services.risk.prices import PriceSource
from shared.allowance import Allowance, own_subject_only
from shared.bus import dead_letter, last_message
from shared.consumer import Reject
from shared.contracts import ContractError, DataStale, decode
from shared.logging import warn
from shared.service import ServiceContext


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


async def follow_notices(ctx: ServiceContext, adopt: Callable[[DataStale, bool], Awaitable[None]]) -> None:
    """Hand ``adopt`` (notice, at_boot) every stale notice published from now on and the newest one already
    published; a malformed one, or one ``adopt`` refuses (``Reject``), is dead-lettered while the allowance for
    its reason lasts (20, then one a minute, each saying how many went unlettered before it).  A compromised ingest
    can send them without bound: lettered in full, a flood filled risk's dead-letter subject with its own junk,
    pushing out risk's genuine dead letters (a forged target's record)."""
    allowance = Allowance()

    async def letter(subject: str, reason: str, detail: str, data: bytes) -> None:
        unsaid = allowance.note(reason)
        if unsaid is None:
            ctx.health.inc("stale_notices_unlettered")
            return
        if unsaid:
            detail = f"{detail} ({unsaid} more refused for {reason} and not dead-lettered before this one)"
        await dead_letter(ctx.js, ctx.logger, ctx.name, subject, reason, detail, data)

    async def on_notice(msg: Msg) -> None:
        try:
            await adopt(decode(msg.data, DataStale), False)
        except ContractError as exc:
            await letter(msg.subject, "malformed", str(exc), msg.data)
        except Reject as exc:
            await letter(msg.subject, exc.reason, str(exc), msg.data)

    # A plain subscription is enough: every notice also stays in its stream, and the newest one is read once
    # here (after subscribing, so none falls between) to cover those published while risk was down.
    await ctx.nc.subscribe(DataStale.SUBJECT, cb=own_subject_only(ctx, DataStale.SUBJECT, on_notice))
    raw = await last_message(ctx.js, DataStale.SUBJECT)
    if raw is not None:
        try:
            await adopt(decode(raw, DataStale), True)
        except (ContractError, Reject) as exc:
            warn(ctx.logger, "DATA_STALE", "newest stale-data notice at boot refused", error=str(exc)[:300])
            await dead_letter(ctx.js, ctx.logger, ctx.name, DataStale.SUBJECT, getattr(exc, "reason", "malformed"),
                              f"at boot: {exc}", raw)
