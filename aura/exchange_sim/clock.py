"""The simulator's one clock: what "now" is for every face (prices, klines, archive, CoinGecko, server time).

``now = anchor + (wall - anchor_wall) x speed``.  Speed 1 runs in real time from a chosen start (the default:
tests see time pass, so account snapshots get newer), 0 stands still (ingest tests pin "now" to the ms), N
runs N times faster than real time (a rehearsal: a daily bar every few seconds).  ``set`` jumps anywhere.
``hold_at`` sets a ceiling the clock waits at until it is raised: a rehearsal lets the clock close the next
bar only once the system has finished with the last one, however slow the machine.

Signed requests carry the client's clock, and Binance refuses one outside ``recvWindow`` of its own.  A client
either uses its machine's clock (the wall clock) or, like ccxt's ``adjustForTimeDifference``, the server time
it read once plus the real time elapsed since.  An accelerated or jumping clock leaves the second kind behind
by design, so :meth:`judge` accepts a timestamp that fits either frame: the wall clock, or any offset from the
wall clock this clock has had (``_lo.._hi``).  A clock that only ever runs at speed 1 has one offset: exactly
Binance's rule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime


def parse_ms(value: int | str | None) -> int | None:
    """ms since the epoch from an int, a string of digits or an ISO date/time (UTC); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    return int(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp() * 1000)


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class SimClock:
    def __init__(self, start_ms: int, speed: float = 1.0, wall_ms: Callable[[], int] | None = None) -> None:
        if speed < 0:
            raise ValueError(f"clock speed must be >= 0, got {speed}")
        self._wall = wall_ms or wall_clock_ms
        self._lock = threading.Lock()
        self.speed = speed
        self._anchor, self._anchor_wall = start_ms, self._wall()
        self._lo = self._hi = start_ms - self._anchor_wall
        self._ceiling: int | None = None

    def wall_ms(self) -> int:
        return self._wall()

    def _now(self, wall: int) -> int:
        now = self._anchor + int((wall - self._anchor_wall) * self.speed)
        if self._ceiling is not None and now > self._ceiling:
            # Held: wait at the ceiling, and run on from there (not from where it would have been) once raised.
            self._anchor, self._anchor_wall, now = self._ceiling, wall, self._ceiling
        self._lo, self._hi = min(self._lo, now - wall), max(self._hi, now - wall)
        return now

    def now_ms(self) -> int:
        with self._lock:
            return self._now(self._wall())

    def set(self, ms: int) -> None:
        """Jump to ``ms``; the clock runs on from there at its speed."""
        with self._lock:
            self._anchor, self._anchor_wall = ms, self._wall()
            self._now(self._anchor_wall)

    def hold_at(self, ms: int | None) -> None:
        """Never run past ``ms`` (None: no ceiling) until it is raised; ``set`` cannot pass it either."""
        with self._lock:
            self._now(self._wall())
            self._ceiling = ms

    def set_speed(self, speed: float) -> None:
        """Run at ``speed`` from now on (no jump)."""
        if speed < 0:
            raise ValueError(f"clock speed must be >= 0, got {speed}")
        with self._lock:
            wall = self._wall()
            self._anchor, self._anchor_wall = self._now(wall), wall
            self.speed = speed

    def judge(self, timestamp: int, recv_window_ms: int, skew_ms: int = 0) -> str:
        """"" if a client in sync could send ``timestamp`` now, else "ahead" or "old" (the nearer miss).

        ``skew_ms`` shifts the server's clock against everyone (a fault: provokes -1021 on purpose).
        """
        with self._lock:
            wall = self._wall()
            self._now(wall)
            misses = []
            for lo, hi in ((0, 0), (self._lo, self._hi)):
                earliest, latest = wall + lo + skew_ms - recv_window_ms, wall + hi + skew_ms + 1000
                if earliest <= timestamp <= latest:
                    return ""
                misses.append((earliest - timestamp, "old") if timestamp < earliest else (timestamp - latest, "ahead"))
        return min(misses)[1]
