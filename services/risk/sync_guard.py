"""Sync guard, logged [SYNC_GUARD]: never act on one suspicious read of positions (or prices).

Exchanges answer balance reads with glitches: an empty list, a snapshot from before the last fills, a list
missing an asset, most often right after a 5xx or a timeout.  Acting on such a read is how a bot liquidates a
healthy book or halts itself: the journal says "0.5 BTC", the read says "0 BTC", and a naive check concludes
the position vanished.  This module decides, purely, when a shortfall is real: only after ``confirm_reads``
*consecutive successful* reads all show the same shortfall.  A failed read breaks the streak, so the first
read after a broker error can never confirm anything on its own.

It is deliberately generic (name -> amount): the executor uses it to verify journal holdings against exchange
balances before each plan, and the risk tick uses it on ticker reads, where a held symbol missing from the
answer must not be valued at nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

IN_SYNC = "in_sync"  # the read covers what we expect: act normally
UNCONFIRMED = "unconfirmed"  # a shortfall seen, not yet confirmed: do nothing drastic, read again
CONFIRMED = "confirmed"  # the same shortfall on consecutive good reads: it is real, stop and tell a human
READ_FAILED = "read_failed"  # the read itself failed: nothing learned, the streak starts over

DEFAULT_CONFIRM_READS = 3


@dataclass(frozen=True)
class Tolerance:
    """A shortfall smaller than ``max(abs_tol, rel_tol * expected)`` is rounding, not a missing position."""

    abs_tol: float = 1e-8
    rel_tol: float = 1e-6

    def allows(self, expected: float, observed: float) -> bool:
        return expected - observed <= max(self.abs_tol, self.rel_tol * abs(expected))


@dataclass(frozen=True)
class GuardState:
    streak: int = 0  # consecutive successful reads that showed the current shortfall
    shortfall: tuple[tuple[str, float], ...] = ()  # what those reads were missing (name, missing amount)
    after_error: bool = False  # the previous read failed


@dataclass(frozen=True)
class Verdict:
    status: str  # IN_SYNC | UNCONFIRMED | CONFIRMED | READ_FAILED
    shortfall: dict[str, float]
    streak: int
    reason: str


def shortfall(expected: Mapping[str, float], observed: Mapping[str, float],
              tolerance: Tolerance = Tolerance()) -> dict[str, float]:
    """What ``observed`` lacks of ``expected`` (name -> missing amount). Extra names or amounts are fine:
    an exchange account may hold more than this system bought, never less."""
    out: dict[str, float] = {}
    for name, want in sorted(expected.items()):
        if want <= 0:
            continue
        got = float(observed.get(name, 0.0) or 0.0)
        if not tolerance.allows(want, got):
            out[name] = want - got
    return out


def _same(a: tuple[tuple[str, float], ...], b: dict[str, float], tolerance: Tolerance) -> bool:
    if {n for n, _ in a} != set(b):
        return False
    return all(abs(v - b[n]) <= max(tolerance.abs_tol, tolerance.rel_tol * abs(v)) for n, v in a)


def observe(state: GuardState, expected: Mapping[str, float], observed: Mapping[str, float] | None, *,
            confirm_reads: int = DEFAULT_CONFIRM_READS,
            tolerance: Tolerance = Tolerance()) -> tuple[Verdict, GuardState]:
    """Fold one read into the guard. ``observed=None`` means the read failed.

    Pure: the same state and read always give the same verdict, so the rule is testable without an exchange.
    A shortfall is CONFIRMED only when ``confirm_reads`` consecutive successful reads show the *same* one; a
    read that differs restarts the streak (a glitch rarely repeats itself exactly), a read in sync clears it.
    """
    if confirm_reads < 1:
        raise ValueError("confirm_reads must be >= 1")
    if observed is None:
        return (Verdict(READ_FAILED, {}, 0, "read failed; the next read cannot confirm a shortfall alone"),
                GuardState(after_error=True))
    missing = shortfall(expected, observed, tolerance)
    if not missing:
        return Verdict(IN_SYNC, {}, 0, "read covers the expected amounts"), GuardState()
    streak = state.streak + 1 if state.streak and _same(state.shortfall, missing, tolerance) else 1
    new_state = GuardState(streak=streak, shortfall=tuple(sorted(missing.items())), after_error=False)
    if streak >= confirm_reads:
        return Verdict(CONFIRMED, missing, streak, f"same shortfall on {streak} consecutive reads"), new_state
    why = "right after a failed read" if state.after_error else "not yet seen on consecutive reads"
    return Verdict(UNCONFIRMED, missing, streak, f"shortfall {why} ({streak}/{confirm_reads})"), new_state
