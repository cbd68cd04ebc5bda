"""Where `aura up` puts each process's health app (the console's: its page too): the port set, or a free one.

A port nobody set is a default (8100-8105).  When it is taken (another system on another AURA_HOME, a
rehearsal, anything else) the launcher moves that process to a free port, as it moves the embedded nats-server
off a taken 4222, says so, and records the port in the run file, where the CLI finds it.  A port the operator
set (env AURA_<SERVICE>_PORT or the TOML file) is a promise made elsewhere (a firewall rule, a scrape target, a
bookmark), so a taken one stops `aura up` before anything starts, in one line naming the port and the setting.

Nothing reserves a port until the service binds it: one taken between this check and the bind makes that service
exit naming the port, and the launcher reports the death; it never takes another process's answer for its own
(aura/launcher.py: wait_ready checks who answers).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Mapping

from shared.config import SERVICE_NAMES, Settings


class PortTaken(RuntimeError):
    """A health port the operator set cannot be used; the message names the port and the setting."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def can_bind(port: int, host: str) -> bool:
    """Whether a service could bind ``host:port`` now (SO_REUSEADDR, as uvicorn binds: TIME_WAIT is no obstacle)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# The ports free_port has handed out lately in this process.  Ports are taken several in a row (one per service,
# then the bus) and bound later by other processes; once the probing socket is closed the kernel may offer the same
# ephemeral port again, and two services given one port fail at start (seen in CI: ingest and the console).  Only
# the newest RECENT are remembered: a port handed out that long ago has been bound (can_bind then refuses it) or
# let go, and a process that hands out thousands (the test suite) must not run out of a band of AURA_PORT_RANGE.
RECENT = 1024
_HANDED_OUT: dict[int, None] = {}  # insertion-ordered: the oldest first
_HANDED_OUT_LOCK = threading.Lock()


def _remember(port: int) -> None:
    _HANDED_OUT[port] = None
    while len(_HANDED_OUT) > RECENT:
        del _HANDED_OUT[next(iter(_HANDED_OUT))]


def port_range() -> tuple[int, int] | None:
    """``AURA_PORT_RANGE`` ("LO-HI"): where free ports are drawn from instead of the system's ephemeral ones.  For
    processes that pick ports side by side, each in a band of its own (the test suite's parallel workers: two
    processes remembering only their own handed-out ports could hand out one port twice), or a firewall's range."""
    text = os.environ.get("AURA_PORT_RANGE", "").strip()
    if not text:
        return None
    lo, _, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"AURA_PORT_RANGE must be LO-HI, got {text!r}") from None
    if not 1024 <= low < high <= 65535:
        raise ValueError(f"AURA_PORT_RANGE {text!r} is not a range of ports above 1023")
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now on ``host`` and that this process has not handed out lately (drawn from
    ``AURA_PORT_RANGE`` when it is set)."""
    band = port_range()
    with _HANDED_OUT_LOCK:
        for _ in range(256):
            if band is not None:
                port = random.randint(*band)
                if port in _HANDED_OUT or not can_bind(port, host):
                    continue
            else:
                with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
                    sock.bind((host, 0))
                    port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _remember(port)
                return port
    raise RuntimeError(f"no free port on {host} that this process has not handed out lately"
                       + (f" in AURA_PORT_RANGE {band[0]}-{band[1]}" if band else ""))


def choose_ports(settings: Settings, sources: Mapping[str, str]) -> tuple[dict[str, int], list[str]]:
    """(service -> the port its health app gets, one line per default port moved); PortTaken if a port the
    operator set (``sources``, from shared.config.setting_sources) is taken or given to two processes."""
    host = settings.health_host
    chosen: dict[str, int] = {}
    moved: list[str] = []
    # The ports someone set first: they cannot move, so a default that collides with one is the one to move.
    for name in (n for n in SERVICE_NAMES if f"{n}_port" in sources):
        port, where = settings.port_for(name), sources[f"{name}_port"]
        clash = next((other for other, taken in chosen.items() if taken == port), None)
        if clash is not None:
            raise PortTaken(f"{name}'s health port {port} (set by {where}) is also {clash}'s; give each its own port")
        if not can_bind(port, host):
            raise PortTaken(f"{name}'s health port {port} on {host} is taken (set by {where}); stop what holds it, "
                            "or set another port")
        chosen[name] = port
    for name in (n for n in SERVICE_NAMES if n not in chosen):
        port = settings.port_for(name)
        if port in chosen.values() or not can_bind(port, host):
            free = free_port(host)
            while free in chosen.values():  # a port someone set, not bound yet, that the system may offer
                free = free_port(host)
            moved.append(f"{name}'s default port {port} is taken; its health app uses free port {free} instead")
            port = free
        chosen[name] = port
    return {n: chosen[n] for n in SERVICE_NAMES}, moved
