"""A running AURA system to attack: `aura up`'s launcher on an authenticated nats-server, replaying the last days
of the bundled history until it is idle, so that "nothing changed" can be checked exactly.

The attacker is a client that reaches the NATS port: with no credential, or holding one service's NKey (a
compromised service keeps its own rights, never its peers' signing keys).  After each attack the journal and
the book must be unchanged, and every service still ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aura.launcher import Stack, wait_ready
from aura.natsd import NatsServer
from shared.bus import MSG_ID_HEADER, client_options, last_message, scope_jetstream
from shared.config import SERVICE_NAMES, Settings
from shared.contracts import DeadLetter, decode
from shared.state_keys import WRITERS
from tests.bus_helpers import dead_letters, journal_rows, launch_system

REPLAY_START = "2024-11-24"  # the bundled history ends 2024-12-05: 12 cycles, then idle
MIN_CYCLES = 12


@dataclass(frozen=True)
class Book:
    """What an attack must not change: every journal table that moves money, and the portfolio."""

    tables: dict[str, int]
    cash: float
    holdings: dict[str, float]
    last_snapshot: str


@dataclass
class System:
    stack: Stack
    server: NatsServer
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def journal(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return journal_rows(self.settings, sql, args)

    def book(self) -> Book:
        tables = {t: int(self.journal(f"SELECT count(*) FROM {t}")[0][0])
                  for t in ("plans", "intents", "orders", "fills", "snapshots")}
        snapshot_id, cash, holdings = self.journal(
            "SELECT snapshot_id, cash, holdings FROM snapshots ORDER BY seq DESC LIMIT 1")[0]
        return Book(tables, float(cash), json.loads(holdings), str(snapshot_id))

    def events_since(self, seq: int) -> list[tuple[str, str, str]]:
        return [(str(k), str(c), str(d)) for k, c, d in
                self.journal("SELECT kind, cycle_id, detail FROM events WHERE id > ? ORDER BY id", (seq,))]

    def last_event_seq(self) -> int:
        return int(self.journal("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def ready(self) -> dict[str, int]:
        s = self.settings
        with httpx.Client(timeout=3) as client:
            return {n: client.get(f"http://{s.health_host}:{s.port_for(n)}/readyz").status_code for n in SERVICE_NAMES}

    def readiness(self, service: str) -> dict[str, Any]:
        """``service``'s /readyz body: ready, and each check's text."""
        s = self.settings
        return dict(httpx.get(f"http://{s.health_host}:{s.port_for(service)}/readyz", timeout=3).json())

    def metrics(self, service: str) -> str:
        s = self.settings
        return httpx.get(f"http://{s.health_host}:{s.port_for(service)}/metrics", timeout=3).text

    def counter(self, service: str, name: str) -> float:
        """A counter's total (or a gauge's value) in ``service``'s /metrics, all labels summed (0: not yet)."""
        wanted = {f"aura_{name}", f"aura_{name}_total"}
        return sum(sample.value for family in text_string_to_metric_families(self.metrics(service))
                   for sample in family.samples if sample.name in wanted)

    def log_lines(self, service: str, tag: str) -> list[dict[str, Any]]:
        path = self.stack.logs / f"{service}.log"
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if f'"tag":"{tag}"' in line:
                out.append(json.loads(line))
        return out

    async def connect(self, principal: str | None) -> nats.NATS:
        """A client on this system's bus: anonymous (None) or holding ``principal``'s NKey."""
        options = client_options(self.settings, principal) if principal else {}
        nc = await nats.connect(self.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                                error_cb=_collect, **options)
        return scope_jetstream(nc, principal, options["nkeys_seed_str"]) if principal else nc

    def dead_letters(self, service: str) -> list[DeadLetter]:
        async def read() -> list[DeadLetter]:
            nc = await self.connect("operator")
            try:
                return await dead_letters(nc.jetstream(), service)
            finally:
                await nc.close()

        return asyncio.run(read())


ERRORS: list[str] = []


async def _collect(exc: Exception) -> None:
    ERRORS.append(str(exc))


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    home = tmp_path_factory.mktemp("attacked") / "home"
    stack, server, _ = launch_system(home, AURA_REPLAY_START=REPLAY_START, AURA_REPLAY_INTERVAL_S="0.1",
                                     AURA_RISK_TICK_S="0.5")
    system = System(stack, server, stack.settings)
    try:
        wait_ready(stack, 90)

        def idle() -> bool:
            done = system.journal("SELECT count(*) FROM snapshots WHERE status != 'genesis'")[0][0]
            return done >= MIN_CYCLES

        wait_until(idle, f"{MIN_CYCLES} replayed cycles", timeout=120)
        time.sleep(1.5)  # the last cycle's snapshot published, a few risk ticks run
        yield system
    finally:
        stack.stop()
        server.stop()


# --- what the attack tests do on the running system ----------------------------------------------------------


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def js_publish(system: System, principal: str | None, subject: str, payload: bytes,
                     msg_id: str | None = None, headers: dict[str, str] | None = None) -> str:
    """'refused: ...' when the bus refuses the connection or the publish, else 'stored'."""
    ERRORS.clear()
    try:
        nc = await system.connect(principal)
    except Exception as exc:
        return f"refused: {exc}"
    try:
        headers = {**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})} or None
        await nc.jetstream().publish(subject, payload, timeout=2, headers=headers)
        return "stored"
    except Exception as exc:
        await asyncio.sleep(0.05)
        return f"refused: {exc} {ERRORS}"
    finally:
        await nc.close()


def assert_untouched(system: System, before: Any, why: str) -> None:
    time.sleep(1.5)  # long enough for risk to plan and the executor to trade, were anything accepted
    after = system.book()
    assert after == before, f"{why}: the journal or the book changed: {before} -> {after}"
    assert set(system.ready().values()) == {200}, f"{why}: a service is no longer ready: {system.ready()}"


async def newest(system: System, kind: type[Any]) -> Any:
    nc = await system.connect("operator")
    try:
        raw = await last_message(nc.jetstream(), kind.SUBJECT)
        return decode(raw, kind) if raw is not None else None
    finally:
        await nc.close()


async def state_entries(system: System) -> dict[str, tuple[int, bytes]]:
    """Every aura_state key that exists: key -> (revision, value), read with the operator's credential."""
    nc = await system.connect("operator")
    try:
        kv = await nc.jetstream().key_value("aura_state")
        out = {}
        for key in (k for keys in WRITERS.values() for k in keys):
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
                out[key] = (int(entry.revision or 0), bytes(entry.value or b""))
        return out
    finally:
        await nc.close()
