"""How much of a flood gets said: a token bucket per key.

A message a compromised (or merely broken) principal can send without bound must still be counted every time,
but logged, journaled or dead-lettered only while its allowance lasts: ``burst`` of them, then one more per
``every_s``, each saying how many went unsaid before it.  Said in full, a flood grows a journal, a log or the
dead-letter stream (pushing genuine dead letters out) without bound.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shared.logging import warn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg

    from shared.service import ServiceContext


class Allowance:
    """``note(key)``: None when this one is only counted; else how many of ``key`` went unsaid since the last one
    said (say this one now)."""

    def __init__(self, burst: int = 20, every_s: float = 60.0) -> None:
        self.burst, self.every_s = burst, every_s
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._since: dict[str, int] = {}

    def note(self, key: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        tokens, then = self._tokens.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) / self.every_s)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            self._since[key] = self._since.get(key, 0) + 1
            return None
        self._tokens[key] = (tokens - 1.0, now)
        return self._since.pop(key, 0)


class SaidOnce:
    """What is new to say: ``first(key, value)`` is True when ``value`` differs from the last one seen for ``key``.
    A stored request that is refused is read again at every poll and tick; said once per bad write (its problem
    names the revision), not once per read."""

    def __init__(self) -> None:
        self._last: dict[str, object] = {}

    def first(self, key: str, value: object) -> bool:
        if key in self._last and self._last[key] == value:
            return False
        self._last[key] = value
        return True


def own_subject_only(ctx: ServiceContext, subject: str,
                     handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    """``handler`` for a plain subscription to ``subject``, handed only messages of that subject.

    A principal allowed to pull from a durable consumer can have stored messages delivered here (a pull request's
    reply subject may name any subject, and JetStream delivers to it with the message's own subject).  Those are
    never handled as ours and never dead-lettered (a flood would push genuine dead letters out of their stream):
    counted (``misrouted``), and said while the allowance lasts."""
    allowance = Allowance()

    async def on_message(msg: Msg) -> None:
        if msg.subject == subject:
            await handler(msg)
            return
        ctx.health.inc("misrouted")
        unsaid = allowance.note(subject)
        if unsaid is not None:
            warn(ctx.logger, "MISROUTED", "a stored message of another subject was pushed onto this subscription; "
                 "dropped", expected=subject, subject=msg.subject[:200], dropped_unsaid_before=unsaid)

    return on_message
