"""Helpers the tests that run service bodies on a real nats-server share: wait for a condition, read the
executor's newest snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from shared.bus import last_message
from shared.contracts import PortfolioSnapshot, decode


async def until(probe: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    """Poll the async ``probe`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def snapshot(js: Any) -> PortfolioSnapshot:
    """The newest portfolio snapshot the executor published."""
    raw = await last_message(js, PortfolioSnapshot.SUBJECT)
    assert raw is not None, "no portfolio snapshot published yet"
    return decode(raw, PortfolioSnapshot)
