"""One executor per journal: an exclusive lock on ``<journal>.lock`` for as long as the executor runs.

Two executors on one journal would share its books and the exchange account: each reconciles, each takes plans
from the durable consumer, and a plan's idempotency rests on one writer knowing every order it placed.  `aura up`
refuses a second system on a home (shared/runfile.py), but nothing stopped a second executor otherwise: a
`docker compose up --scale executor=2`, a service started by hand beside a running system, a restart racing the
old process.  The second one now waits with /readyz red ("held by executor pid N") and takes over the moment
the first one exits, kill -9 included (the kernel drops a dead process's locks).

An advisory ``flock`` on a file of its own: SQLite's own locks are POSIX record locks on the database, which
``flock`` neither sees nor disturbs.  The executor never forks, so nothing else inherits the lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from shared.pidlock import LockHeld, hold_exclusive


class JournalHeld(RuntimeError):
    """Another executor holds the journal."""


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


def own_journal(journal: Path) -> IO[str]:
    """The journal's lock, held while the returned file stays open; JournalHeld if another process has it, an
    OSError if the lock file cannot be made (a read-only or full disk: the caller's journal fault)."""
    try:
        return hold_exclusive(lock_path(journal))
    except LockHeld as exc:
        raise JournalHeld(f"held by executor pid {exc.holder}; this one takes over when it stops") from None
