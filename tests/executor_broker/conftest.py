"""CcxtBroker against a real simulator on a free loopback port (real 1d candles of BTC and ETH)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from services.executor.brokers.ccxt_broker import CcxtBroker

T = TypeVar("T")


@pytest.fixture
def sim_server(shared_data_dir: Path, request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """Config overrides via ``@pytest.mark.parametrize("sim_server", [{...}], indirect=True)``."""
    cfg: dict[str, Any] = {"data_dir": shared_data_dir / "binance" / "1d", "symbols": ("BTCUSDT", "ETHUSDT"),
                           "start": "2024-01-01"}
    cfg.update(getattr(request, "param", {}) or {})
    with SimServer(config=SimConfig(**cfg)) as server:
        yield server


def run_with_broker(server: SimServer, scenario: Callable[[CcxtBroker], Awaitable[T]], **kwargs: Any) -> T:
    """Run ``scenario(broker)`` in a fresh event loop with a broker pointed at ``server``; always closes it."""
    options: dict[str, Any] = {"api_key": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET,
                               "base_url": server.base_url, "timeout_ms": 2000, "enable_rate_limit": False,
                               "adjust_for_time_difference": False}
    options.update(kwargs)

    async def main() -> T:
        broker = CcxtBroker(**options)
        try:
            return await scenario(broker)
        finally:
            await broker.close()

    return asyncio.run(main())
