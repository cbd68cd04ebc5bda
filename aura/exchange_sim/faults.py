"""Fault injection and request counting, for every face of the simulator alike.

A fault is armed for the next ``count`` requests (``None``: every one until cleared) matching ``method`` and
``path``, a shell-style pattern ("*" matches anything, "/data/*" the whole archive, "*BTCUSDT-1d-2024-03*"
one month's files).  Faults that model a lost *response* (timeout, drop) run the request first by default:
that is the case that double-fills naive clients, because the order exists although the client never heard so.

Transport faults (timeout, drop, http_error, rate_limit) apply to any path.  *Content* faults are a 200 with
wrong content, applied by the face that owns the path: ``empty_balance`` / ``stale_balance`` (account),
``corrupt_zip`` (damaged zip bytes with a matching checksum, so only the unzip notices), ``encrypted_flag``
(the "encrypted" bit set: Python's zipfile raises RuntimeError, not BadZipFile), ``bad_checksum`` (a good zip
whose CHECKSUM names another digest), ``seconds_timestamps`` (a well-formed file whose open times are in
seconds: a unit the client must refuse), ``wrong_shape`` (CoinGecko OHLC as a JSON object instead of rows)
and ``duplicate_conflict`` (CoinGecko sends a second, different row for one close time).
"""

from __future__ import annotations

import fnmatch
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

CONTENT_KINDS = ("empty_balance", "stale_balance", "corrupt_zip", "encrypted_flag", "bad_checksum",
                 "seconds_timestamps", "lagging_klines", "lagging_trades", "wrong_shape", "duplicate_conflict")
FAULT_KINDS = ("timeout", "drop", "http_error", "rate_limit", *CONTENT_KINDS)


@dataclass
class Fault:
    kind: str
    method: str = "*"
    path: str = "*"
    count: int | None = 1  # None: until cleared
    delay_s: float = 2.0  # timeout: how long the response is held back
    status: int = 503  # http_error: HTTP status to answer
    retry_after_s: float = 1.0  # rate_limit: Retry-After header
    process: bool | None = None  # run the request before failing? default: True except http_error/rate_limit
    body: str | None = None  # http_error: raw body (default: Binance's -1001 JSON)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1 (or null: until cleared)")
        self.method = self.method.upper()
        if self.process is None:
            self.process = self.kind not in ("http_error", "rate_limit")
        if self.kind == "rate_limit":
            self.process = False  # Binance refuses a rate-limited request before it reaches the engine

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path)

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
    """Armed faults, per-endpoint request counters and the last requests; thread-safe (the server is threaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._counts: Counter[str] = Counter()
        self._log: deque[tuple[str, str]] = deque(maxlen=100_000)  # (path, query), arrival order

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self, prefix: str = "") -> None:
        """Disarm every fault, or only those whose path pattern starts with ``prefix`` (one face's)."""
        with self._lock:
            self._faults = [f for f in self._faults if prefix and not f.path.startswith(prefix)]

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first armed fault matching this request."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def count_request(self, method: str, path: str, query: str = "") -> None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1
            self._log.append((path, query))

    def counts(self) -> dict[str, int]:
        """Requests per "METHOD /path" (control endpoints not counted)."""
        with self._lock:
            return dict(self._counts)

    def requests(self, prefix: str = "") -> list[str]:
        """The paths (with their query) of the requests under ``prefix``, oldest first."""
        with self._lock:
            return [f"{p}?{q}" if q else p for p, q in self._log if p.startswith(prefix)]

    def reset_counts(self, prefix: str = "") -> None:
        """Forget the requests under ``prefix`` (all by default)."""
        with self._lock:
            for key in [k for k in self._counts if k.split(" ", 1)[1].startswith(prefix)]:
                del self._counts[key]
            self._log = deque(((p, q) for p, q in self._log if not p.startswith(prefix)), maxlen=self._log.maxlen)
