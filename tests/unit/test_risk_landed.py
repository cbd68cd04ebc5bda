"""Risk remembers the newest bar cycle that traded, so copies of its target are not planned again; a risk tick's
exit that lands afterwards (its cycle id is the tick's) must not make it forget that cycle."""

from __future__ import annotations

from types import SimpleNamespace

from services.risk.service import InFlight, Risk


def test_a_tick_exit_landing_does_not_forget_the_bar_cycle_that_traded() -> None:
    risk = Risk.__new__(Risk)
    risk.traded, risk.inflight = "", InFlight("p-bar", 0.0, "1d-20240102T0000")
    risk.landed(SimpleNamespace(status="executed", cycle_id="1d-20240102T0000"))  # type: ignore[arg-type]
    assert risk.traded == "1d-20240102T0000" and risk.inflight is None
    risk.inflight = InFlight("p-tick", 0.0, "tick-abc")
    risk.landed(SimpleNamespace(status="executed", cycle_id="tick-abc"))  # type: ignore[arg-type]
    assert risk.traded == "1d-20240102T0000" and risk.inflight is None
    risk.inflight = InFlight("p-next", 0.0, "1d-20240103T0000")
    risk.landed(SimpleNamespace(status="aborted", cycle_id="1d-20240103T0000"))  # type: ignore[arg-type]
    assert risk.traded == "1d-20240102T0000", "a cycle that closed without trading is not 'traded'"


def test_a_plan_no_snapshot_closed_blocks_its_cycle_on_that_basis_only() -> None:
    """A bar cycle's plan timed out in flight on basis s-1 (the executor refused it without closing it): a copy of
    the target on s-1 gets no plan (copies of a traded cycle held the ticks off, an audit), one on another basis
    does (the executor refused it as stale_basis and said the book again: the cycle still trades).  A tick's plan
    that times out blocks nothing."""
    from collections import OrderedDict

    from services.risk.inflight import FlightTracking

    class Budget:
        def unsend(self, bar: object, legs: object) -> None:
            pass

    flights = FlightTracking()
    flights.ctx = SimpleNamespace(settings=SimpleNamespace(cycle_timeout_s=30.0))  # type: ignore[assignment]
    flights.sent = Budget()  # type: ignore[assignment]
    flights.traded, flights.unclosed = "", OrderedDict()
    cycle = "1d-20240102T0000"
    flights.inflight = InFlight("p-1", 0.0, cycle, basis_id="s-1")  # published long ago (monotonic 0)
    assert flights.settled(SimpleNamespace(plan_id="p-0"))  # type: ignore[arg-type]
    assert flights.inflight is None and flights.unclosed == {cycle: "s-1"}
    assert flights.not_to_plan(cycle, None) == ""  # before the basis is known: not decided here
    assert flights.not_to_plan(cycle, SimpleNamespace(snapshot_id="s-1")) != ""  # type: ignore[arg-type]
    assert flights.not_to_plan(cycle, SimpleNamespace(snapshot_id="s-2")) == ""  # type: ignore[arg-type]
    flights.inflight = InFlight("p-t", 0.0, "tick-abc", basis_id="s-1")
    assert flights.settled(SimpleNamespace(plan_id="p-0"))  # type: ignore[arg-type]
    assert "tick-abc" not in flights.unclosed
