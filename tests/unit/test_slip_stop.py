"""The stop a slipped live fill puts on the plan's further buys (execution._stop_buys_if_slipped), on a real journal."""

from __future__ import annotations

from pathlib import Path

from services.executor.brokers.client_order_id import client_order_id
from services.executor.execution import ExecutionResult, _stop_buys_if_slipped
from services.executor.journal import Journal
from services.executor.live_guard import LiveGuard
from shared.contracts import PlanLeg
from tests.unit.test_execution import plan


def test_a_slipped_fill_stops_only_buys_never_sent_and_is_judged_once(tmp_path: Path) -> None:
    """From a review: the stop journaled every later buy not final as skipped, a "sent" or "acked" one included,
    which a restart may leave open while its order is on the exchange (its fills would then never be journaled).
    Only pending or unsent buys are stopped.  And a fill is judged once whatever the verdict (``fill_judged``), so
    a later run with other limits does not judge an accepted fill again."""
    legs = [PlanLeg(0, "BTC/USDT", "buy", 0.1, 40_000.0, "enter"), PlanLeg(1, "ETH/USDT", "buy", 2.0, 2000.0, "enter"),
            PlanLeg(2, "SOL/USDT", "buy", 10.0, 100.0, "enter")]
    p = plan(legs)
    journal = Journal(tmp_path / "journal.sqlite")
    journal.begin()
    for leg in legs:
        journal.record_intent(client_order_id(p.plan_id, leg.index), p.cycle_id, p.plan_id, leg.index, leg.symbol,
                              leg.side, leg.qty, leg.ref_price)
    journal.set_intent_status(client_order_id(p.plan_id, 1), "sent")  # left open by a restart
    guard = LiveGuard(max_price_deviation=0.02, max_spread=0.01, cash=10_000.0)
    cid0 = client_order_id(p.plan_id, 0)
    why = _stop_buys_if_slipped(journal, p, legs[0], cid0, 40_000.0, 0.1, 44_000.0, guard, ExecutionResult())
    journal.commit()
    assert "filled 10.0% worse" in why
    states = [journal.intent_state(client_order_id(p.plan_id, i))[0] for i in range(3)]
    assert states == ["pending", "sent", "skipped"], states
    assert journal.order_event(p.cycle_id, "fill_judged", cid0) is not None
    journal.begin()
    calm = _stop_buys_if_slipped(journal, p, legs[1], client_order_id(p.plan_id, 1), 2000.0, 2.0, 2001.0, guard,
                                 ExecutionResult())
    journal.commit()
    assert calm == "" and journal.order_event(p.cycle_id, "fill_judged", client_order_id(p.plan_id, 1)) is not None
