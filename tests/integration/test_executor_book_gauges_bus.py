"""The executor's ``aura_equity`` and ``aura_exposure`` show the journal's book from boot, on a real, secured
nats-server with the executor's real ``run(ctx)`` body (paper broker): before its first plan, and after a restart
on a journal that holds coins.  Each value is read from the service's Prometheus registry, what /metrics exports."""

from __future__ import annotations

import asyncio

import pytest

from shared.contracts import PortfolioSnapshot
from shared.service import ServiceContext
from tests.bus_helpers import publish_buy, role_connections, running, snapshot, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def book_gauges(ctx: ServiceContext) -> tuple[float | None, float | None]:
    """(equity, exposure) as the executor's /metrics exports them (None: no sample)."""
    labels = {"service": "executor"}
    registry = ctx.health.registry
    return registry.get_sample_value("aura_equity", labels), registry.get_sample_value("aura_exposure", labels)


async def shown_book(ctx: ServiceContext) -> tuple[float | None, float | None]:
    async def shown() -> tuple[float | None, float | None] | None:
        equity, exposure = book_gauges(ctx)
        return (equity, exposure) if equity else None  # 0: nothing shown yet

    return await until(shown, "the executor to show its book")


def test_a_restarted_executor_shows_its_journaled_book_before_any_plan(nats_server: NatsEndpoint) -> None:
    """Before: both gauges were set only after a plan ran, so a restart read equity 0 and exposure 0."""
    settings = nats_server.settings()

    async def scenario() -> tuple[PortfolioSnapshot, tuple[float | None, float | None], PortfolioSnapshot,
                                  tuple[float | None, float | None]]:
        async with role_connections(settings, "risk", "operator") as js:
            async with running(settings, "executor") as contexts:
                genesis = await snapshot(js["operator"])
                at_genesis = await shown_book(contexts["executor"])
                body = await publish_buy(js["risk"], settings, "1d-20240101T0000", genesis.snapshot_id, qty=0.05)

                async def executed() -> PortfolioSnapshot | None:
                    snap = await snapshot(js["operator"])
                    return snap if snap.plan_id == body.plan_id and snap.status in ("executed", "partial") else None

                holding = await until(executed, "the buy to be executed")
            async with running(settings, "executor") as contexts:  # a restart on the same journal
                restarted = await shown_book(contexts["executor"])
        return genesis, at_genesis, holding, restarted

    genesis, at_genesis, holding, restarted = asyncio.run(scenario())
    assert at_genesis == (genesis.equity, 0.0) and genesis.equity == settings.paper_cash_usdt, at_genesis
    assert holding.holdings.get("BTC/USDT", 0.0) > 0 and holding.equity > 0, holding
    assert restarted == (holding.equity, 1.0 - holding.cash / holding.equity), (restarted, holding)
    assert restarted[1] is not None and 0.0 < restarted[1] < 1.0, restarted
