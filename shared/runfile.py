"""The run file of an `aura up`: how the CLI and hand-started services find the system running on an AURA_HOME.

``aura up`` takes an exclusive lock on ``$AURA_HOME/aura.lock`` for its whole life and writes
``$AURA_HOME/run.json`` (NATS URL, the health URLs its processes actually got, its pid and run id).  A second
``aura up`` on the same home fails to take the lock and stops at once, so two embedded servers never share one
JetStream store.  Commands resolve the bus from ``AURA_NATS_URL`` if set, else from the run file of a live
``aura up``; never from a guessed default port, which on a shared machine may be somebody else's server.  Health
ports likewise: a default one may have moved (aura/ports.py), and whatever answers on it may be another
system's; each service names its run id in its answers (shared/health.py), so an answer is believed only with
the run file's id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from shared.config import ConfigError, Settings
from shared.pidlock import LockHeld, hold_exclusive


@dataclass(frozen=True)
class RunInfo:
    nats_url: str
    pid: int
    health: dict[str, str]  # service -> /readyz URL, on the port it actually got
    started_at_ms: int
    run_id: str = ""  # the random id every process of this run names in its /healthz and /readyz


def lock_path(home: Path) -> Path:
    return home / "aura.lock"


def run_path(home: Path) -> Path:
    return home / "run.json"


class HomeLocked(RuntimeError):
    """Another `aura up` holds this AURA_HOME."""


def acquire_home(home: Path) -> IO[str]:
    """Take the exclusive lock on ``home`` (kept while the returned file stays open); HomeLocked if taken."""
    try:
        return hold_exclusive(lock_path(home))
    except LockHeld as exc:
        raise HomeLocked(f"another `aura up` (pid {exc.holder}), or services it started that outlived it, is running "
                         f"on AURA_HOME={home}; stop it first, or set AURA_HOME to another directory") from None


def write_run(home: Path, info: RunInfo) -> None:
    tmp = run_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
    tmp.replace(run_path(home))


def clear_run(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        run_path(home).unlink()


def live_run(home: Path) -> RunInfo | None:
    """The run file of an `aura up` that still holds the home's lock, or None (none ran, or it died)."""
    path = run_path(home)
    if not path.is_file() or not lock_path(home).is_file():
        return None
    with open(lock_path(home)) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the system is up
        else:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None  # nobody holds it: a stale file left by a killed `aura up`
    try:
        doc = json.loads(path.read_text())
        return RunInfo(str(doc["nats_url"]), int(doc["pid"]), dict(doc.get("health", {})),
                       int(doc.get("started_at_ms", 0)), str(doc.get("run_id", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_nats_url(settings: Settings) -> str:
    """``AURA_NATS_URL`` if set, else the bus of the `aura up` running on this AURA_HOME; ConfigError if neither."""
    if settings.nats_url:
        return settings.nats_url
    run = live_run(settings.home_path)
    if run is None:
        raise ConfigError(f"no AURA system is running on AURA_HOME={settings.home_path} (no live run file); start "
                          "one with `aura up`, or set AURA_NATS_URL")
    return run.nats_url
