"""An exclusive lock that names its holder: an advisory ``flock`` on a file holding the pid that took it.

Used for the one-writer rules of the system: one `aura up` per AURA_HOME (shared/runfile.py), one executor per
journal (services/executor/journal_owner.py).  The lock lives as long as the returned file stays open in any
process (children handed the descriptor share it); the kernel drops it when the last holder dies, kill -9
included, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` is the pid it wrote (or "unknown")."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by pid {holder}")
        self.path, self.holder = path, holder


def hold_exclusive(path: Path) -> IO[str]:
    """Take the lock on ``path`` (created if missing) or raise LockHeld; kept while the returned file is open.
    OSError if the file cannot be made (a read-only or full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for as long as the lock is wanted
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise LockHeld(path, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
