"""The journal against the venue's own books: what every crash trial and every rehearsal ends with.

No clientOrderId booked twice, no venue order the journal does not know, no working order left behind, the
journal's fills exactly the venue's trades, every plan final with its snapshot, and the journal's portfolio
(``portfolio_from_fills``) equal to the venue's balances exactly.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.executor.execution import FINAL_INTENT_STATES
from services.executor.journal import Journal
from services.executor.portfolio import portfolio_from_fills
from services.executor.runner import FINAL_PLAN_STATES
from shared.contracts import PlanBody

FINAL_SIM_STATUSES = {"FILLED", "CANCELED", "EXPIRED", "REJECTED"}


def verify(journal_path: Path, plans: list[PlanBody], orders: list[dict[str, Any]], trades: list[dict[str, Any]],
           balances: dict[str, dict[str, str]], assets: list[str]) -> tuple[list[str], int, list[str]]:
    """(violations, fills, plan statuses): the journal against the simulator's own books for one trial."""
    violations: list[str] = []
    j = Journal(journal_path)
    try:
        intents = {r[0]: r[1] for r in j.db.execute("SELECT client_order_id, status FROM intents")}
        fills = j.db.execute("SELECT trade_id, client_order_id, qty FROM fills").fetchall()
        statuses = [str(j.plan_status(p.plan_id)) for p in plans]
        snapshots = {r[0] for r in j.db.execute("SELECT plan_id FROM snapshots")}
        pf = portfolio_from_fills(j.initial_cash() or 0.0, j.all_fills())
    finally:
        j.close()
    for cid, n in Counter(o["clientOrderId"] for o in orders).items():
        if n > 1:
            violations.append(f"double fill: clientOrderId {cid} booked {n} times on the exchange")
        if cid not in intents:
            violations.append(f"unknown order: exchange order {cid} is not in the journal")
    for o in orders:
        if o["status"] not in FINAL_SIM_STATUSES:
            violations.append(f"working order left behind: {o['clientOrderId']} {o['status']}")
    sim_trades = {str(t["id"]): t for t in trades}
    journal_trades = {str(tid): (cid, qty) for tid, cid, qty in fills}
    if set(sim_trades) != set(journal_trades):
        violations.append(f"fills differ: exchange-only {sorted(set(sim_trades) - set(journal_trades))}, "
                          f"journal-only {sorted(set(journal_trades) - set(sim_trades))}")
    cid_of_order = {int(o["orderId"]): o["clientOrderId"] for o in orders}
    for tid, t in sim_trades.items():
        if tid in journal_trades and journal_trades[tid][0] != cid_of_order[int(t["orderId"])]:
            violations.append(f"fill {tid} journaled under the wrong order {journal_trades[tid][0]}")
    for cid, status in intents.items():
        if status not in FINAL_INTENT_STATES:
            violations.append(f"intent {cid} left {status}")
    for p, status in zip(plans, statuses, strict=True):
        if status not in FINAL_PLAN_STATES or status == "rejected":
            violations.append(f"plan {p.plan_id} ended {status}")
        if p.plan_id not in snapshots:
            violations.append(f"plan {p.plan_id} has no snapshot")

    def total(asset: str) -> float:
        b = balances.get(asset) or {"free": "0", "locked": "0"}
        return float(Decimal(b["free"]) + Decimal(b["locked"]))

    # Exactly, no tolerance: the journal sums the exchange's own 8-decimal amounts the way the exchange does,
    # each fee out of the asset it was taken in (a buy's from the coins bought, the simulator's default).
    if total("USDT") != pf.cash:
        violations.append(f"cash: journal {pf.cash} != exchange {total('USDT')}")
    held = {sym.split("/")[0]: q for sym, q in pf.holdings.items()}
    for asset in assets:
        if total(asset) != held.get(asset, 0.0):
            violations.append(f"{asset}: journal {held.get(asset, 0.0)} != exchange {total(asset)}")
    return violations, len(fills), statuses
