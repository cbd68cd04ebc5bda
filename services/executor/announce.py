"""What the executor tells the bus once a cycle is committed: the signed portfolio snapshot and the plan's fills.

Both are published only after the journal's commit, so a crash between the two leaves the journal ahead of the
bus, never behind it: recovery at boot publishes again what the journal holds.
"""

from __future__ import annotations

import time

import msgspec
from nats.js import JetStreamContext

from services.executor.journal import Journal
from services.executor.runner import PlanRun
from shared.bus import publish
from shared.contracts import FillMsg, PlanBody, PortfolioSnapshot


async def publish_snapshot(js: JetStreamContext, snap: PortfolioSnapshot, again: bool = False) -> None:
    """Publish ``snap`` (already signed).  ``again``: a snapshot already published, said once more so it is the
    newest message on its subject (risk and ingest read that one); its own id would be dropped by the stream's
    duplicate window, so this copy gets a fresh message id."""
    msg_id = f"{snap.snapshot_id}.again-{time.time_ns()}" if again else snap.snapshot_id
    await publish(js, snap, msg_id=msg_id)


async def publish_fills(js: JetStreamContext, journal: Journal, run: PlanRun) -> None:
    """One message per new fill of ``run``, with the side its leg had in the journaled plan."""
    if not run.new_fills:
        return
    body = journal.plan_body(run.plan_id)
    sides = {}
    if body is not None:
        sides = {leg.symbol: leg.side for leg in msgspec.json.decode(body, type=PlanBody).legs}
    for trade_id, cid, symbol, qty, price, fee in run.new_fills:
        await publish(js, FillMsg(fill_id=trade_id, cycle_id=run.cycle_id, plan_id=run.plan_id, client_order_id=cid,
                                  symbol=symbol, side=sides.get(symbol, ""), qty=qty, price=price, fee=fee),
                      msg_id=f"fill-{cid}-{trade_id}")  # trade ids repeat across symbols
