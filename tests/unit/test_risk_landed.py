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
