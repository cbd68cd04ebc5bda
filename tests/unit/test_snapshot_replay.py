"""Which older book risk refuses as a replay (services/risk/inputs.py ``replayed``), and which it must not: a
genuine snapshot republished after a newer one by a holder of the executor's bus credential is refused; a new book
from an executor whose clock stepped back is taken (found by a review: refusing on commit time alone stalled it)."""

from __future__ import annotations

from services.risk.inputs import replayed
from shared.contracts import PortfolioSnapshot

DAY = 86_400_000


def book(ident: str, committed_at_ms: int, history_ms: list[int]) -> PortfolioSnapshot:
    return PortfolioSnapshot(snapshot_id=ident, cycle_id=f"c-{ident}", plan_id="", status="executed", cash=1.0,
                             holdings={}, entry_prices={}, equity=1.0, equity_history=[1.0] * len(history_ms),
                             committed_at_ms=committed_at_ms, equity_history_ms=history_ms)


BASIS = book("s-new", 10 * DAY, [7 * DAY, 8 * DAY, 9 * DAY, 10 * DAY])


def test_an_earlier_point_of_the_basis_is_a_replay_seen_or_not() -> None:
    assert replayed(book("s-9", 9 * DAY, [7 * DAY, 8 * DAY, 9 * DAY]), BASIS, seen_before=False)
    assert replayed(book("s-1", 1 * DAY, [1 * DAY]), BASIS, seen_before=False)  # older than the whole window


def test_an_older_book_off_the_history_is_a_replay_only_if_risk_read_it_before() -> None:
    tick_exit = book("s-tick", 9 * DAY + 3_600_000, [7 * DAY, 8 * DAY, 9 * DAY])  # no bar cycle: no history point
    assert replayed(tick_exit, BASIS, seen_before=True)
    # An executor whose clock stepped back an hour commits a new book "before" the basis: taken.
    stepped_back = book("s-next", 10 * DAY - 3_600_000, [8 * DAY, 9 * DAY, 10 * DAY - 3_600_000])
    assert not replayed(stepped_back, BASIS, seen_before=False)


def test_a_newer_book_is_never_a_replay() -> None:
    assert not replayed(book("s-11", 11 * DAY, [8 * DAY, 9 * DAY, 10 * DAY, 11 * DAY]), BASIS, seen_before=True)
