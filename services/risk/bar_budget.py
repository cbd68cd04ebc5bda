"""What risk has already sent in the current decision bar, per symbol and side.

The participation cap (``aura.strategy.capacity``) bounds a leg by a share of the decision bar's volume.  A
cycle plans once per bar, but the risk tick may plan again between cycles (stop-loss exits, a kill-switch
liquidation the cap cut short), on the same bar's volume: the cap is on the bar, so what earlier plans on it
sent on the same side is taken off (a cycle's buy must not use up the room of a stop-loss exit).  Counted when
a plan is published (as if it filled in full: a plan the executor refuses only makes the rest of the bar more
careful).  Kept in memory: a restart of risk mid-bar starts the bar's count again (README says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class SentLeg(Protocol):
    symbol: str
    side: str
    qty: float


@dataclass
class SentInBar:
    bar_ms: int | None = None  # open time of the decision bar counted
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # base quantity per (symbol, side)

    def on(self, bar_ms: int | None) -> dict[tuple[str, str], float]:
        """What was sent on the bar opening at ``bar_ms``: a newer bar starts from nothing; None (the bar could not
        be read) keeps the count, so a failed read never hands out the bar's room a second time."""
        if bar_ms is not None and bar_ms != self.bar_ms:
            self.bar_ms, self.sent = bar_ms, {}
        return dict(self.sent)

    def add(self, bar_ms: int | None, legs: Iterable[SentLeg]) -> None:
        self.on(bar_ms)
        for leg in legs:
            key = (leg.symbol, leg.side)
            self.sent[key] = self.sent.get(key, 0.0) + float(leg.qty)
