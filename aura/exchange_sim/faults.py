"""Fault injection and request counting.

A fault is armed for the next ``count`` requests matching ``method`` and ``path`` ("*" matches anything).
Faults that model a lost *response* (timeout, drop) run the request first by default: that is the case that
double-fills naive clients, because the order exists although the client never heard so.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

FAULT_KINDS = ("timeout", "drop", "http_error", "rate_limit", "empty_balance", "stale_balance")


@dataclass
class Fault:
    kind: str
    method: str = "*"
    path: str = "*"
    count: int = 1
    delay_s: float = 2.0  # timeout: how long the response is held back
    status: int = 503  # http_error: HTTP status to answer
    retry_after_s: float = 1.0  # rate_limit: Retry-After header
    process: bool | None = None  # run the request before failing? default: True except http_error/rate_limit
    body: str | None = None  # http_error: raw body (default: Binance's -1001 JSON)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        self.method = self.method.upper()
        if self.process is None:
            self.process = self.kind not in ("http_error", "rate_limit")
        if self.kind == "rate_limit":
            self.process = False  # Binance refuses a rate-limited request before it reaches the engine

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.path in ("*", path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fault:
        allowed = set(cls.__dataclass_fields__)
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """Armed faults plus per-endpoint request counters; thread-safe (the HTTP server is threaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._counts: Counter[str] = Counter()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first armed fault matching this request."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def count_request(self, method: str, path: str) -> None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
