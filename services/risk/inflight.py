"""The plan risk published last, until a snapshot of the executor closes it, and what risk remembers of the
cycles it planned: the bookkeeping ``Risk`` (service.py) mixes in.

A cycle trades once.  Risk knows a cycle traded from the snapshot that closed its plan (``traded``), and a cycle
whose plan no snapshot closed in ``cycle_timeout_s`` from the basis it was planned on (``unclosed``): the
executor refused it without closing it (``cycle_done`` for a cycle that traded before a restart of risk, a
reconcile halt) or it is still queued behind a slow executor.  A copy of such a cycle's target on the same basis
is not planned again: after a restart of risk each copy of a traded cycle's target made a plan the executor
refused without closing, held "in flight" for ``cycle_timeout_s``, and one copy every 30 s from a compromised
signal kept the stop-loss ticks waiting most of the bar (found by an audit).  On another basis (the executor
refused it as ``stale_basis`` and said the book again) it is planned again, as before.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from services.risk.bar_budget import BarBudget
from shared.contracts import PlanLeg, PortfolioSnapshot
from shared.cycles import as_of_of_cycle
from shared.service import ServiceContext

TRADED = ("executed", "partial")  # a snapshot status that means the cycle's plan traded (the executor's cycle_done)
UNCLOSED_KEPT = 256  # cycles remembered as planned with no snapshot closing the plan


@dataclass
class InFlight:
    plan_id: str
    since: float  # monotonic
    cycle_id: str = ""
    bar: int | None = None  # the decision bar whose participation count took its legs
    sells: tuple[PlanLeg, ...] = ()  # its exits: given back to the count if they may not have filled
    held: dict[str, float] = field(default_factory=dict)  # the basis's holdings of those exits' symbols
    basis_id: str = ""  # the snapshot it was planned on


class FlightTracking:
    """Mixed into ``Risk``: the plan in flight, the cycle traded last, the cycles whose plan never closed."""

    ctx: ServiceContext
    sent: BarBudget
    inflight: InFlight | None
    traded: str  # the newest bar cycle a plan of this process traded (executed or partial)
    unclosed: OrderedDict[str, str]  # cycle id -> the basis its plan was made on, for plans no snapshot closed

    def landed(self, snap: PortfolioSnapshot) -> None:
        """The plan in flight is closed by ``snap``: nothing in flight, and its cycle traded if it did."""
        if snap.status in TRADED and as_of_of_cycle(snap.cycle_id) is not None:  # a bar's cycle, not a tick's
            self.traded = snap.cycle_id
        if snap.status != "executed":
            self.gone_unfilled(snap)
        self.inflight = None

    def gone_unfilled(self, closed: PortfolioSnapshot | None = None) -> None:
        """The plan in flight ended without all its legs filled (refused, rejected, partial, or never closed): what
        its exits did not sell goes back to the bar's participation count, so the next tick may send it again.
        Counted as filled, a stop-loss the executor refused was held back for the rest of the bar, a day on 1d,
        with the check saying stop_loss and nothing sent (found by an audit).

        What did sell is what the holding lost between the plan's basis and the snapshot that ``closed`` it (a plan
        never buys what it sells, and the executor runs a plan only on its own basis); only the rest is given back,
        so a partly filled exit cannot take the bar's room twice (giving back whole legs let the next tick sell its
        filled part again: up to twice the cap, found by an audit).  Never closed (refused before the journal, or
        lost): nothing is known to have sold, all of it goes back, the price ``unsend`` already pays for a publish
        that may not have gone out."""
        flight = self.inflight
        if flight is None or not flight.sells:
            return
        unsold = list(flight.sells)
        if closed is not None:
            unsold = []
            for leg in flight.sells:
                sold = min(leg.qty, max(0.0, flight.held.get(leg.symbol, 0.0) - closed.holdings.get(leg.symbol, 0.0)))
                if leg.qty - sold > 0:
                    unsold.append(msgspec.structs.replace(leg, qty=leg.qty - sold))
        self.sent.unsend(flight.bar, unsold)

    def settled(self, snap: PortfolioSnapshot) -> bool:
        """Whether the plan published last is closed in ``snap`` (or so old it never will be: refused)."""
        flight = self.inflight
        if flight is None:
            return True
        if snap.plan_id == flight.plan_id:
            self.landed(snap)
            return True
        if time.monotonic() - flight.since > self.ctx.settings.cycle_timeout_s:
            self.gone_unfilled()  # refused before the journal (a plan it cannot verify): no snapshot ever closes it
            if as_of_of_cycle(flight.cycle_id) is not None:  # a bar's cycle: a tick's is never planned twice
                self.unclosed[flight.cycle_id] = flight.basis_id
                while len(self.unclosed) > UNCLOSED_KEPT:
                    self.unclosed.popitem(last=False)
            self.inflight = None
            return True
        return False

    def not_to_plan(self, cycle_id: str, basis: PortfolioSnapshot | None) -> str:
        """Why a target of ``cycle_id`` gets no plan now ("" if it may): the cycle traded, its plan is in flight,
        or (``basis`` known) its plan on this very basis never closed."""
        flight = self.inflight
        if flight is not None and flight.cycle_id == cycle_id and \
                time.monotonic() - flight.since <= self.ctx.settings.cycle_timeout_s:
            return "planned, its plan in flight"
        if cycle_id == self.traded:
            return "traded"
        if basis is not None and self.unclosed.get(cycle_id) == basis.snapshot_id:
            return "planned on this basis, its plan never closed"
        return ""
