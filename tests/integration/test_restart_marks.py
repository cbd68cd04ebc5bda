"""A restarted executor values its holdings at the newest prices its journal holds, not at their entry prices.

Found by an audit: the marks lived in memory only, so after a restart a cycle aborted upstream (stale data) was
snapshotted with every holding at its entry price: an equity point that never was (BTC bought at 40,000, priced
30,000 since: +300 on that cycle, -300 on the next, for 0.01 BTC), in the history risk's kill-switch reads and in
`aura pnl --daily`.  The marks now start from the prices of the newest plans journaled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.bus import publish
from shared.contracts import CycleAborted, DataStale, PlanBody, PortfolioSnapshot, plan_id_for
from shared.credentials import signing_key
from shared.signing import sign_plan
from tests.bus_helpers import snapshot, until
from tests.conftest import NatsEndpoint
from tests.integration.test_executor_refusals import cycle_snapshot, executed, executor, send_buy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_cycle_aborted_after_a_restart_is_valued_at_the_journals_newest_prices(nats_server: NatsEndpoint) -> None:
    stale_cycle = "1d-20240103T0000"

    async def before_restart() -> PortfolioSnapshot:
        async with executor(nats_server) as rig:
            bought = await send_buy(rig, "1d-20240101T0000")  # 0.01 BTC at 40,000
            await until(lambda: executed(rig, bought), "the buy")
            # The next cycle holds: no leg, BTC priced at 30,000 since.
            fields: dict[str, Any] = {
                "cycle_id": "1d-20240102T0000", "as_of_ms": 1_704_153_600_000, "data_digest": "d",
                "target_id": "t-hold", "params_version": 0, "params_digest": "p",
                "basis_snapshot_id": (await snapshot(rig.risk)).snapshot_id, "gate": "pass", "halted": False,
                "legs": [], "reasons": [], "prices": {"BTC/USDT": 30_000.0}}
            hold = PlanBody(plan_id=plan_id_for(fields), **fields)
            await publish(rig.risk, sign_plan(hold, signing_key(rig.settings.keys, "risk")), msg_id=hold.plan_id)
            return await until(lambda: executed(rig, hold), "the hold")

    async def after_restart() -> PortfolioSnapshot:
        async with executor(nats_server) as rig:  # a new process: nothing in memory
            stale = DataStale(cycle_id=stale_cycle, timeframe="1d", reason="missing ETH/USDT", missing=["ETH/USDT"],
                              as_of_ms=1_704_240_000_000)
            await publish(rig.ingest, stale, msg_id=f"stale-{stale_cycle}")
            await publish(rig.ingest, CycleAborted(cycle_id=stale_cycle, stage="ingest", reason="stale data"),
                          msg_id=f"abort-ingest-{stale_cycle}")
            return await until(lambda: cycle_snapshot(rig, stale_cycle), "the aborted cycle's snapshot")

    held = asyncio.run(before_restart())
    aborted = asyncio.run(after_restart())
    assert held.holdings["BTC/USDT"] == pytest.approx(0.01)
    assert held.equity == pytest.approx(held.cash + 0.01 * 30_000.0)
    assert aborted.status == "aborted"
    assert aborted.equity == pytest.approx(held.equity), "the holding was valued at its entry price after a restart"
