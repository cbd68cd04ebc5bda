"""The sync guard as a pure function: a shortfall acts only when confirmed on consecutive good reads."""

from __future__ import annotations

import pytest

from services.risk.sync_guard import (
    CONFIRMED,
    IN_SYNC,
    READ_FAILED,
    UNCONFIRMED,
    GuardState,
    Tolerance,
    observe,
    shortfall,
)

HELD = {"USDT": 1000.0, "BTC": 0.5, "ETH": 2.0}


def fold(reads: list[dict[str, float] | None], confirm: int = 3) -> list[str]:
    state = GuardState()
    out = []
    for read in reads:
        verdict, state = observe(state, HELD, read, confirm_reads=confirm)
        out.append(verdict.status)
    return out


def test_shortfall_ignores_extra_assets_and_rounding() -> None:
    assert shortfall(HELD, {**HELD, "BNB": 3.0, "USDT": 1500.0}) == {}
    assert shortfall(HELD, {"USDT": 1000.0 - 1e-9, "BTC": 0.5, "ETH": 2.0}) == {}
    assert shortfall(HELD, {"USDT": 1000.0, "BTC": 0.2}) == {"BTC": pytest.approx(0.3), "ETH": 2.0}
    assert shortfall({"BTC": 0.0}, {}) == {}  # nothing expected, nothing missing


def test_tolerance_is_absolute_or_relative() -> None:
    tol = Tolerance(abs_tol=0.01, rel_tol=0.001)
    assert tol.allows(100.0, 99.95) and not tol.allows(100.0, 99.8)
    assert tol.allows(1.0, 0.995) and not tol.allows(1.0, 0.98)


def test_in_sync_read_passes_at_once() -> None:
    assert fold([dict(HELD)]) == [IN_SYNC]


def test_empty_read_right_after_a_failed_read_is_never_acted_on() -> None:
    verdict, state = observe(GuardState(), HELD, None)
    assert verdict.status == READ_FAILED and state.after_error
    verdict, state = observe(state, HELD, {})  # the classic glitch: a 5xx, then an empty balance list
    assert verdict.status == UNCONFIRMED and "right after a failed read" in verdict.reason
    assert verdict.shortfall == HELD
    verdict, _ = observe(state, HELD, dict(HELD))  # and the next read shows everything back
    assert verdict.status == IN_SYNC


def test_a_failed_read_restarts_the_streak() -> None:
    assert fold([{}, {}, None, {}, {}]) == [UNCONFIRMED, UNCONFIRMED, READ_FAILED, UNCONFIRMED, UNCONFIRMED]


def test_the_same_shortfall_on_consecutive_reads_is_confirmed() -> None:
    gone = {"USDT": 1000.0, "ETH": 2.0}  # the BTC really left the account
    assert fold([gone, gone, gone]) == [UNCONFIRMED, UNCONFIRMED, CONFIRMED]
    assert fold([gone], confirm=1) == [CONFIRMED]


def test_different_shortfalls_do_not_add_up_to_a_confirmation() -> None:
    # Glitches vary from read to read (a partial list, then another partial list): each restarts the streak.
    assert fold([{"USDT": 1000.0}, {"BTC": 0.5, "ETH": 2.0}, {"USDT": 1000.0}]) == [UNCONFIRMED] * 3


def test_a_good_read_clears_a_pending_shortfall() -> None:
    assert fold([{}, {}, dict(HELD), {}, {}]) == [UNCONFIRMED, UNCONFIRMED, IN_SYNC, UNCONFIRMED, UNCONFIRMED]


def test_confirm_reads_must_be_positive() -> None:
    with pytest.raises(ValueError):
        observe(GuardState(), HELD, {}, confirm_reads=0)
