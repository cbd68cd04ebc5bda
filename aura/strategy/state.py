"""State the signal stage carries from one cycle to the next (regime hysteresis).

The live signal service stores it between cycles (``to_dict`` -> JSON -> ``from_dict``); the backtester
threads it through its loop.  It is the *only* memory of ``compute_targets``: everything else is recomputed
from the panel, so a restart with the stored state gives exactly the decision an uninterrupted run gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REGIMES = ("bull", "sideways", "bear")


@dataclass(frozen=True)
class SignalState:
    regime: str = "bear"  # regime in force (adopted); a cold start holds cash until a regime is confirmed
    candidate: str = ""  # regime seen on the last cycle but not yet adopted ("" = none pending)
    candidate_count: int = 0  # consecutive cycles the candidate has been seen
    last_timestamp: int = -1  # open time (ms) of the decision bar of the last cycle; -1 = never run

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}")
        if self.candidate not in ("", *REGIMES):
            raise ValueError(f"unknown candidate regime {self.candidate!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "regime": self.regime,
            "candidate": self.candidate,
            "candidate_count": self.candidate_count,
            "last_timestamp": self.last_timestamp,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignalState:
        return cls(
            regime=str(data.get("regime", "bear")),
            candidate=str(data.get("candidate", "")),
            candidate_count=int(data.get("candidate_count", 0)),
            last_timestamp=int(data.get("last_timestamp", -1)),
        )
